"""The chips of a device study's points (``experiments.study``): the dense or compressed
model on programmed chips of one point's device, crossbar and robustness settings, its mapping
plan made once per crossbar geometry, its output-calibration batch drawn once per size."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from memxbar.crossbar import CrossbarConfig, DeviceModel, MappingPlan
from memxbar.experiments.chip_test import make_strata
from memxbar.experiments.chips import ChipDesign, ChipJob, evaluate_chips
from memxbar.experiments.data import calibration_batch
from memxbar.experiments.selective_verify import with_selective_verify
from memxbar.experiments.settings import RobustnessSettings
from memxbar.experiments.stages import map_stage

__all__ = ["StudyChips"]


class StudyChips:
    """Chip accuracies of a device study's points: ``model`` with its ``dense`` or
    ``compressed`` state on ``chips`` programmed chips (seeds ``seed`` on), evaluated on
    ``test``, under one point's device, crossbar and robustness settings. A crossbar
    geometry's mapping plan (without the ``exclude``d digital layers) is made once, an
    output-calibration size's batch of ``train`` images drawn once, not once per point;
    ``digital`` / ``devices``: the ``layers`` section; ``sampling`` / ``workers``: the
    ``eval`` section's stratified chip test (every point's chip accuracies are then unbiased
    estimates, and its yield is counted on them) and worker processes."""

    def __init__(self, model: nn.Module, dense: Mapping[str, torch.Tensor],
                 compressed: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                 scales: Mapping, calibration: torch.Tensor, train: DataLoader,
                 test: DataLoader, *, torch_device: torch.device, chips: int, seed: int,
                 exclude: Sequence[str] = (), digital: Sequence[str] = (),
                 devices: Mapping[str, DeviceModel] | None = None,
                 sampling: tuple[float, float] | None = None, workers: int = 1) -> None:
        self.model, self.dense, self.compressed = model, dense, compressed
        self.masks, self.scales, self.calibration = masks, scales, calibration
        self.train, self.test, self.torch_device = train, test, torch_device
        self.chips, self.seed, self.exclude = chips, seed, exclude
        self.digital, self.devices = digital, devices
        self.sampling, self.workers = sampling, workers
        self.plans: dict[tuple[str, str], MappingPlan] = {}
        self.output_batches: dict[int, torch.Tensor] = {}

    def _load(self, name: str) -> None:
        self.model.load_state_dict(self.dense if name == "dense" else self.compressed)

    def plan(self, name: str, xbar: CrossbarConfig) -> MappingPlan:
        """The mapping plan depends on the model and the crossbar geometry: made once."""
        key = (name, json.dumps(xbar.to_dict(), sort_keys=True, default=str))
        if key not in self.plans:
            self._load(name)
            self.plans[key] = map_stage(self.model, self.masks if name == "compressed"
                                        else None, xbar, self.calibration,
                                        exclude=self.exclude)
        return self.plans[key]

    def _outputs(self, xbar: CrossbarConfig, rob: RobustnessSettings) -> torch.Tensor | None:
        """The output-calibration batch (drawn once per size, not once per point)."""
        if not xbar.output_calibration:
            return None
        n = rob.calibration_samples
        if n not in self.output_batches:
            self.output_batches[n] = calibration_batch(self.train, n, self.torch_device,
                                                       self.seed + 1)
        return self.output_batches[n]

    def _verify(self, name: str, design: ChipDesign, rob: RobustnessSettings,
                plan: MappingPlan) -> ChipDesign:
        """``design`` with selective write-verify's weights (``robustness.verify_fraction``),
        for the model ``name`` loaded now."""
        return with_selective_verify(design, rob, self.model, plan, train=self.train,
                                     calibration=self.calibration,
                                     scales=self.scales if name == "compressed" else None,
                                     seed=self.seed)

    def accuracies(self, name: str, dev: DeviceModel, xbar: CrossbarConfig,
                   rob: RobustnessSettings, desc: str,
                   devices: Mapping[str, DeviceModel] | None = None) -> list[float]:
        """Model ``name``'s accuracy on each chip of device ``dev`` (``devices``: per-layer
        devices instead of the ``layers`` section's)."""
        outputs = self._outputs(xbar, rob)
        plan = self.plan(name, xbar)
        self._load(name)
        design = self._verify(name, ChipDesign(
            dev, xbar, rob.repair(), tuple(self.digital),
            dict(self.devices or {}) if devices is None else dict(devices)), rob, plan)
        return evaluate_chips(self.model, plan, design, calibration=self.calibration,
                              test=self.test, chips=self.chips, seed=self.seed, desc=desc,
                              scales=self.scales if name == "compressed" else None,
                              outputs=outputs, sampling=self.sampling,
                              workers=self.workers).accuracies

    def job(self, name: str, dev: DeviceModel, xbar: CrossbarConfig,
            rob: RobustnessSettings) -> ChipJob:
        """Programming and testing model ``name``'s chips on ``dev`` (a copy of the model,
        so later points cannot change it), with the study's chip test."""
        outputs = self._outputs(xbar, rob)
        plan = self.plan(name, xbar)
        self._load(name)
        model = copy.deepcopy(self.model)
        strata = None if self.sampling is None else make_strata(model, self.test,
                                                                *self.sampling)
        design = self._verify(name, ChipDesign(dev, xbar, rob.repair(), tuple(self.digital),
                                               dict(self.devices or {})), rob, plan)
        return ChipJob(model, plan, design, self.calibration, self.test,
                       self.scales if name == "compressed" else None, outputs, self.seed,
                       strata)
