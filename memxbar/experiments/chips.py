"""The Monte Carlo over programmed chips, as a public API.

:func:`evaluate_chips` programs ``chips`` chips of a mapped model (seeds ``seed .. seed +
chips - 1``), repairs and calibrates each right after programming as a real chip would be
(stuck-cell compensation and placement, converter ranges, per-output digital calibration
against the software model), lets it drift to the device's inference time and measures its test
accuracy. It returns one :class:`ChipRecord` per chip (accuracy, programming cost, repair and
calibration statistics) in a :class:`ChipRun`. The apps use it for every chip they evaluate (the
compress run, its ablation, the device study)::

    from memxbar.experiments.chips import ChipDesign, evaluate_chips
    design = ChipDesign(DeviceModel.preset("rram_neurram"), CrossbarConfig(), RepairConfig())
    run = evaluate_chips(model, plan, design, calibration=x, test=loader, chips=25, seed=0)
    run.mean, run.ci95, run.worst, [r.accuracy for r in run]
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from memxbar.crossbar import (
    CrossbarConfig,
    DeviceModel,
    MappingPlan,
    RepairConfig,
    calibrate_outputs,
    programming_cost,
    programming_stats,
    to_crossbar,
)
from memxbar.crossbar.convert import crossbar_modules
from memxbar.experiments.chip_test import (
    EXACT_WITHIN_SE,
    Strata,
    chip_indices,
    estimate,
    make_strata,
    standard_error,
    test_tensors,
)
from memxbar.experiments.estimators import mean_sd
from memxbar.experiments.plots import ci95
from memxbar.experiments.settings import RobustnessSettings
from memxbar.experiments.train import evaluate

__all__ = ["ChipDesign", "ChipRecord", "ChipRun", "evaluate_chips", "ideal_device",
           "mean_std", "robustness_ablation"]

_log = logging.getLogger("memxbar.experiments.chips")

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
    ``digital`` (patterns), per-layer ``devices`` (pattern -> device; the ``layers``
    section) and, for selective write-verify, the weights ``verify``d per layer (None:
    all; ``experiments.selective_verify``)."""

    device: DeviceModel
    crossbar: CrossbarConfig
    repair: RepairConfig | None = None
    digital: Sequence[str] = ()
    devices: Mapping[str, DeviceModel] = field(default_factory=dict)
    verify: Mapping[str, torch.Tensor] | None = None

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
    test_images: int = 0
    exact_accuracy: float | None = None

    @property
    def decided(self) -> float:
        """The accuracy a specification is checked on: measured on every test image when the
        chip was (``exact_accuracy``), else ``accuracy``."""
        return self.accuracy if self.exact_accuracy is None else self.exact_accuracy


class ChipRun(Sequence[ChipRecord]):
    """The records of one :func:`evaluate_chips` call, with their summary."""

    def __init__(self, records: Sequence[ChipRecord], sampling: dict | None = None) -> None:
        self.records = list(records)
        self.sampling = sampling

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
    def decided(self) -> list[float]:
        """Per chip, the accuracy its pass or fail is decided on (``ChipRecord.decided``)."""
        return [r.decided for r in self.records]

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
                   desc: str = "chips", sampling: tuple[float, float] | None = None,
                   spec_floor: float | None = None, workers: int = 1) -> ChipRun:
    """Test accuracy of ``model`` on ``chips`` programmed crossbar chips of ``design`` (seeds
    ``seed .. seed + chips - 1``), each repaired and its converters calibrated on
    ``calibration`` right after programming, its output columns then calibrated against
    ``model`` on ``outputs`` (when ``design.crossbar.output_calibration``), and evaluated
    ``device.t_inference_s`` later (drift). ``scales``: the quantizer's scales, so a quantized
    model's level grid is the device's.

    ``sampling = (risky_fraction, safe_fraction)``: each chip's accuracy is a stratified,
    unbiased estimate from a fraction of the test images (``experiments.chip_test``); a chip
    within 3 standard errors of ``spec_floor`` (the yield's accuracy floor, %) is then run on
    every image. ``workers``: chips programmed and evaluated in that many processes, the
    records bit-identical to one process (each chip is a pure function of its seed)."""
    if design.crossbar.output_calibration and outputs is None:
        raise ValueError("evaluate_chips: crossbar.output_calibration needs calibration "
                         "images (outputs=...)")
    if not isinstance(chips, int) or isinstance(chips, bool) or chips < 1:
        raise ValueError(f"evaluate_chips: chips={chips!r} is invalid; allowed: an integer >= 1")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"evaluate_chips: workers={workers!r} is invalid; allowed: an "
                         "integer >= 1")
    strata = make_strata(model, test, *sampling) if sampling is not None else None
    job = ChipJob(model, plan, design, calibration, test, scales, outputs, seed, strata)
    found = run_chips(job, list(range(chips)), workers, progress, desc)
    records = [r for r, _ in found]
    info = None
    if strata is not None:
        draws = strata.sample * chips
        errors = draws - sum(c for _, c in found)
        se = standard_error(strata, errors, draws)
        near = [] if spec_floor is None or se == 0.0 else [
            r.chip for r in records if abs(r.accuracy - spec_floor) <= EXACT_WITHIN_SE * se]
        if near:
            _log.info("%s: %d of %d chips within %.0f standard errors (%.3f points) of the "
                      "specification's %.2f %%: evaluated on all %d test images", desc,
                      len(near), chips, EXACT_WITHIN_SE, se, spec_floor, strata.total)
            exact = run_chips(dataclasses.replace(job, strata=None), near, workers,
                               progress, desc + " (exact)")
            for r, _ in exact:
                records[r.chip] = dataclasses.replace(records[r.chip],
                                                      exact_accuracy=r.accuracy)
        info = {**strata.to_dict(), "safe_errors": errors, "safe_draws": draws,
                "standard_error": se, "exact_chips": len(near), "exact_within_se":
                EXACT_WITHIN_SE, "spec_floor": spec_floor}
    return ChipRun(records, sampling=info)


@dataclass(frozen=True)
class ChipJob:
    """What programming and testing a chip needs (sent once to each worker process):
    :meth:`program` makes chip ``seed + i`` at t = 0, :meth:`measure` tests it."""

    model: nn.Module
    plan: MappingPlan
    design: ChipDesign
    calibration: torch.Tensor
    test: DataLoader
    scales: Mapping[str, float | torch.Tensor] | None
    outputs: torch.Tensor | None
    seed: int
    strata: Strata | None

    def program(self, xmodel: nn.Module | None, chip_seed: int) -> tuple[nn.Module, dict | None]:
        """Chip ``chip_seed`` at t = 0, its converters calibrated (converted when ``xmodel`` is
        None, else re-programmed: the same chip either way) and its outputs calibrated; the
        fitted output calibration (None without)."""
        device, xbar = self.design.device, self.design.crossbar
        if xmodel is None:
            xmodel = to_crossbar(
                self.model, device.with_(t_inference_s=0.0), xbar,
                calibration=self.calibration, seed=chip_seed, plan=self.plan,
                scales=self.scales, repair=self.design.repair,
                digital=list(self.design.digital),
                devices={k: d.with_(t_inference_s=0.0) for k, d in self.design.devices.items()},
                verify=self.design.verify)
        else:
            xmodel.set_inference_time(0.0)
            xmodel.program(chip_seed)  # recalibrates on the stored calibration batch
        return xmodel, self.calibrate(xmodel)

    def calibrate(self, xmodel: nn.Module) -> dict | None:
        """The per-chip output calibration, fitted on the chip as it is now."""
        return calibrate_outputs(xmodel, self.model, self.outputs) \
            if self.design.crossbar.output_calibration else None

    def measure(self, xmodel: nn.Module, chip_seed: int) -> tuple[float, int, int]:
        """The chip's test accuracy (%; stratified: the estimate), the images it ran and, when
        sampled, its correct images of the safe sample."""
        if self.strata is None:
            return evaluate(xmodel, self.test), len(self.test.dataset), 0
        images, labels = test_tensors(self.test)
        index = chip_indices(self.strata, chip_seed)
        loader = DataLoader(TensorDataset(images[index], labels[index]),
                            batch_size=self.test.batch_size, shuffle=False)
        correct = correct_images(xmodel, loader)
        n_risky = len(self.strata.risky)
        sample_correct = int(correct[n_risky:].sum())
        return (estimate(self.strata, int(correct[:n_risky].sum()), sample_correct),
                len(index), sample_correct)

    def run(self, chips: Sequence[int], tick: Callable[[int], object] | None = None
            ) -> list[tuple[ChipRecord, int]]:
        """The records of ``chips`` (indices from ``seed``) and, sampled, each chip's correct
        images of its safe sample; each chip evaluated ``device.t_inference_s`` after
        programming. A chip is a pure function of its seed: the first one here is converted
        with its seed, the next ones re-programmed, as in one process."""
        device = self.design.device
        xmodel, out = None, []
        for i in chips:
            xmodel, fitted = self.program(xmodel, self.seed + i)
            if device.t_inference_s > 0:
                xmodel.set_inference_time(device.t_inference_s)
            accuracy, n_images, sample_correct = self.measure(xmodel, self.seed + i)
            record = _record(xmodel, i, self.seed + i, accuracy, fitted,
                             verify_reads=verify_reads(device))
            out.append((dataclasses.replace(record, test_images=n_images), sample_correct))
            if tick is not None:
                tick(1)
        return out


_WORKER_JOB = None


def _start_worker(job, threads: int) -> None:
    global _WORKER_JOB
    torch.set_num_threads(threads)
    _WORKER_JOB = job


def _worker_run(chips: list[int]) -> list:
    assert _WORKER_JOB is not None
    return _WORKER_JOB.run(chips)


def run_chips(job, chips: list[int], workers: int, progress: bool, desc: str) -> list:
    """``job.run(chips)`` (a :class:`ChipJob` or any picklable object with ``run(chips,
    tick)`` returning one item per chip), in order: in this process (``workers == 1``) or
    split into runs of consecutive chips (at most 25) over ``workers`` spawned processes of
    ``threads // workers`` threads each."""
    if workers == 1 or len(chips) == 1:
        with tqdm(total=len(chips), desc=desc, disable=not progress, leave=False) as bar:
            return job.run(chips, tick=bar.update)
    if any(t.is_cuda for t in job.model.parameters()):
        raise ValueError(f"eval.workers={workers} is invalid for a model on a GPU; allowed: "
                         "1 (worker processes run on the CPU)")
    size = max(1, min(25, math.ceil(len(chips) / (4 * workers))))
    runs = [chips[k:k + size] for k in range(0, len(chips), size)]
    threads = max(1, torch.get_num_threads() // workers)
    done: dict[int, list] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_start_worker, initargs=(job, threads)) as pool, \
            tqdm(total=len(chips), desc=desc, disable=not progress, leave=False) as bar:
        futures = {pool.submit(_worker_run, run): k for k, run in enumerate(runs)}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            bar.update(len(runs[futures[future]]))
    return [item for k in range(len(runs)) for item in done[k]]


@torch.no_grad()
def correct_images(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    """Per image of ``loader`` (in order), whether ``model`` classifies it correctly."""
    was_training = model.training
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = [(model(x.to(dev)).argmax(dim=1) == y.to(dev)).cpu() for x, y in loader]
    model.train(was_training)
    return torch.cat(out)


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
                        test: DataLoader, scales: Mapping, seed: int,
                        sampling: tuple[float, float] | None = None) -> list[dict]:
    """Chip accuracy on the first ``rob.ablation_chips`` chips of the ``configured`` run as the
    repair steps are added one at a time (as mapped -> + compensation -> + placement -> +
    output calibration, each only when the design uses it), and without write-verify when it
    is on; the last step is the configured procedure (the main result's chips). ``sampling``:
    the configured run's stratified chip test, so every step sees the same test images.
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
              "scales": scales, "sampling": sampling}
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
