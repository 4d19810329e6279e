"""The Monte Carlo over programmed chips, as a public API.

:func:`evaluate_chips` programs ``chips`` chips of a mapped model (seeds ``seed .. seed +
chips - 1``), repairs and calibrates each right after programming as a real chip would be
(stuck-cell compensation and placement, converter ranges, per-output digital calibration
against the software model), lets it drift to the device's inference time and measures its test
accuracy. It returns one :class:`ChipRecord` per chip (accuracy, programming cost, repair and
calibration statistics) in a :class:`ChipRun`. The apps use it for every chip they evaluate (the
compress run, its ablation, the device study)::

    from experiments.chips import ChipDesign, evaluate_chips
    design = ChipDesign(DeviceModel.preset("rram_neurram"), CrossbarConfig(), RepairConfig())
    run = evaluate_chips(model, plan, design, calibration=x, test=loader, chips=25, seed=0)
    run.mean, run.ci95, run.worst, [r.accuracy for r in run]
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from crossbar import (
    CrossbarConfig,
    DeviceModel,
    MappingPlan,
    RepairConfig,
    calibrate_outputs,
    programming_cost,
    programming_stats,
    to_crossbar,
)
from crossbar.convert import crossbar_modules
from experiments.estimators import mean_sd
from experiments.plots import ci95
from experiments.settings import RobustnessSettings
from experiments.train import evaluate

__all__ = ["ChipDesign", "ChipRecord", "ChipRun", "evaluate_chips", "ideal_device",
           "mean_std", "robustness_ablation"]

_log = logging.getLogger("experiments.chips")

REPAIR_KEYS = ("stuck", "detected", "compensated", "placement_error_identity", "placement_error")
"""Per-chip repair statistics summed over the layers (``CrossbarLayer.repair_stats``)."""


def ideal_device(device: DeviceModel) -> DeviceModel:
    """The same conductance range and levels without variation, read noise, drift or faults."""
    return device.with_(programming=None, read_noise=None, drift=None, faults=None,
                        write_verify=None, t_inference_s=0.0)


mean_std = mean_sd
"""Mean and sample standard deviation over chips (``experiments.estimators.mean_sd``)."""


@dataclass(frozen=True)
class ChipDesign:
    """What a programmed chip is made of: the ``device`` of its mapped layers, the
    ``crossbar`` and periphery, the ``repair`` at programming (None: none), the layers kept
    ``digital`` (patterns) and per-layer ``devices`` (pattern -> device; the ``layers``
    section)."""

    device: DeviceModel
    crossbar: CrossbarConfig
    repair: RepairConfig | None = None
    digital: Sequence[str] = ()
    devices: Mapping[str, DeviceModel] = field(default_factory=dict)

    def ideal(self) -> ChipDesign:
        """The same design on ideal devices (:func:`ideal_device`, every layer)."""
        return dataclasses.replace(self, device=ideal_device(self.device), devices={
            k: ideal_device(d) for k, d in self.devices.items()})

    def with_(self, **changes: object) -> ChipDesign:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ChipRecord:
    """One programmed chip: its ``seed``, test ``accuracy`` (%), ``programming`` cost (cells,
    pulses, energy, time; ``crossbar.programming_cost``), ``repair`` statistics (stuck,
    detected and compensated cells, placement error, output RMSE before and after the output
    calibration) and the fitted output ``calibration`` per layer (gain range, largest offset,
    RMSE before and after; None without output calibration)."""

    chip: int
    seed: int
    accuracy: float
    programming: dict
    repair: dict
    calibration: dict | None = None


class ChipRun(Sequence[ChipRecord]):
    """The records of one :func:`evaluate_chips` call, with their summary."""

    def __init__(self, records: Sequence[ChipRecord]) -> None:
        self.records = list(records)

    def __getitem__(self, i):  # noqa: ANN001 - int or slice, as a list
        return self.records[i]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ChipRecord]:
        return iter(self.records)

    @property
    def accuracies(self) -> list[float]:
        return [r.accuracy for r in self.records]

    @property
    def mean(self) -> float:
        return mean_std(self.accuracies)[0]

    @property
    def std(self) -> float:
        return mean_std(self.accuracies)[1]

    @property
    def ci95(self) -> float:
        """Half width of the 95 % confidence interval of the mean (Student's t)."""
        return ci95(self.accuracies)

    @property
    def worst(self) -> float:
        return min(self.accuracies)

    def mean_of(self, part: str) -> dict:
        """The mean over chips of each number in the records' ``part`` (``programming`` or
        ``repair``)."""
        rows = [getattr(r, part) for r in self.records]
        return {k: sum(row[k] for row in rows) / len(rows) for k in rows[0]}


def evaluate_chips(model: nn.Module, plan: MappingPlan, design: ChipDesign, *,
                   calibration: torch.Tensor, test: DataLoader, chips: int, seed: int,
                   scales: Mapping[str, float | torch.Tensor] | None = None,
                   outputs: torch.Tensor | None = None, progress: bool = False,
                   desc: str = "chips") -> ChipRun:
    """Test accuracy of ``model`` on ``chips`` programmed crossbar chips of ``design`` (seeds
    ``seed .. seed + chips - 1``), each repaired and its converters calibrated on
    ``calibration`` right after programming, its output columns then calibrated against
    ``model`` on ``outputs`` (when ``design.crossbar.output_calibration``), and evaluated
    ``device.t_inference_s`` later (drift). ``scales``: the quantizer's scales, so a quantized
    model's level grid is the device's."""
    device, xbar = design.device, design.crossbar
    if xbar.output_calibration and outputs is None:
        raise ValueError("evaluate_chips: crossbar.output_calibration needs calibration "
                         "images (outputs=...)")
    if not isinstance(chips, int) or isinstance(chips, bool) or chips < 1:
        raise ValueError(f"evaluate_chips: chips={chips!r} is invalid; allowed: an integer >= 1")
    # converters are calibrated when a chip is programmed (t = 0); the chip then drifts
    t_inference = device.t_inference_s
    xmodel = to_crossbar(model, device.with_(t_inference_s=0.0), xbar, calibration=calibration,
                         seed=seed, plan=plan, scales=scales, repair=design.repair,
                         digital=list(design.digital),
                         devices={k: d.with_(t_inference_s=0.0)
                                  for k, d in design.devices.items()})
    records = []
    for i in tqdm(range(chips), desc=desc, disable=not progress, leave=False):
        if i:
            xmodel.set_inference_time(0.0)
            xmodel.program(seed + i)  # recalibrates on the stored calibration batch
        fitted = calibrate_outputs(xmodel, model, outputs) if xbar.output_calibration \
            else None  # digital gain/offset per output, once after programming
        if t_inference > 0:
            xmodel.set_inference_time(t_inference)
        records.append(_record(xmodel, i, seed + i, evaluate(xmodel, test), fitted,
                               verify_reads=verify_reads(device)))
    return ChipRun(records)


def verify_reads(device: DeviceModel) -> int:
    """Reads per verify of ``device`` (0: single-shot programming, no verify)."""
    return 0 if device.write_verify is None else device.write_verify.verify_reads


def _record(xmodel: nn.Module, chip: int, seed: int, accuracy: float, fitted: dict | None,
            verify_reads: int) -> ChipRecord:
    stats = [m.repair_stats for _, m in crossbar_modules(xmodel)]
    repair = {k: sum(s.get(k, 0) for s in stats) for k in REPAIR_KEYS}
    if fitted is not None:
        repair["output_rmse_before"] = sum(f["rmse_before"] for f in fitted.values())
        repair["output_rmse_after"] = sum(f["rmse_after"] for f in fitted.values())
    cost = programming_cost(programming_stats(xmodel), verify_reads=verify_reads)
    return ChipRecord(chip=chip, seed=seed, accuracy=accuracy,
                      programming={k: v for k, v in cost.items() if k != "assumptions"},
                      repair=repair, calibration=fitted)


def robustness_ablation(model: nn.Module, plan: MappingPlan, design: ChipDesign,
                        rob: RobustnessSettings, configured: ChipRun, *,
                        calibration: torch.Tensor, outputs: torch.Tensor | None,
                        test: DataLoader, scales: Mapping, seed: int) -> list[dict]:
    """Chip accuracy on the first ``rob.ablation_chips`` chips of the ``configured`` run as the
    repair steps are added one at a time (as mapped -> + compensation -> + placement -> +
    output calibration, each only when the design uses it), and without write-verify when it
    is on; the last step is the configured procedure (the main result's chips).
    Hardware-aware retraining changes the model itself: its effect is measured by a second run
    with ``robustness.hardware_aware=false``."""
    n = min(rob.ablation_chips, len(configured))
    device, xbar = design.device, design.crossbar
    if not rob.ablation or ideal_device(device) == device.with_(t_inference_s=0.0):
        return []
    steps = [("as mapped", RepairConfig(compensation=False))]
    if rob.repair().compensates(device):
        steps.append(("+ pair compensation", RepairConfig(compensation=True,
                                                          miss_rate=rob.miss_rate)))
    if rob.placement and device.active("faults"):
        steps.append(("+ fault-aware placement", rob.repair()))
    common = {"calibration": calibration, "test": test, "chips": n, "seed": seed,
              "scales": scales}
    rows = []
    for name, repair in steps:
        got = evaluate_chips(model, plan, design.with_(
            crossbar=xbar.with_(output_calibration=False), repair=repair), **common)
        rows.append({"step": name, "accuracies": got.accuracies})
    if device.write_verify is not None and rob.write_verify is not None:
        got = evaluate_chips(model, plan, design.with_(
            device=device.with_(write_verify=None), repair=rob.repair()), outputs=outputs,
            **common)
        rows.append({"step": "all but write-verify", "accuracies": got.accuracies})
    last = "+ output calibration" if xbar.output_calibration else "configured procedure"
    rows.append({"step": last + " (configured)", "accuracies": configured.accuracies[:n]})
    for row in rows:
        row["mean"], row["std"] = mean_std(row["accuracies"])
        _log.info("ablation %-32s %.2f +- %.2f%% on %d chips", row["step"], row["mean"],
                  row["std"], n)
    return rows
