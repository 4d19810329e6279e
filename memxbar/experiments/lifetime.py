"""Lifetime of programmed chips: accuracy, yield and maintenance cost over time (issue 24).

Each chip is programmed at t = 0 (its converters and, with ``crossbar.output_calibration``, its
output columns calibrated then), and tested at the ``times_s`` after programming as its cells
drift and relax (the device's ``drift`` law, ``t_inference_s``) and its read noise grows where
the device's law says so (``pcm_1f``). A **maintenance policy** says what is done to it:

``none``
    nothing: the calibration of t = 0 stays.
``drift_compensation``
    global drift compensation (``crossbar.drift_compensation``: one digital gain per layer,
    ``readout(t = 0) / readout(t)``, from the chip's own read-out; Joshi et al., Nat. Commun.
    11, 2473, 2020). Its reference read is not priced.
``recalibrate``
    drift compensation, and the per-chip output calibration fitted again every
    ``recalibrate_every_s`` (at ``k T``: a test at time ``t`` sees the fit of
    ``floor(t / T) T``). Each recalibration runs ``robustness.calibration_samples`` images
    through the chip; priced as that many inferences (the cost model's energy per inference).
``reprogram``
    drift compensation, and a chip found below the specification at a test time is
    re-programmed there (new programming draws, a fresh output calibration) and drifts again
    from that time; priced with the programming cost model (pulses, energy). The test that finds
    it is the study's own accuracy measurement at the study's times (an ideal monitor; a chip in
    the field would use a labelled check set).

Per policy: the mean accuracy and its 95 % CI and the yield (Clopper-Pearson) at every time;
per chip the **time to failure**, the first test time at which it is below the specification
(never, within the times: censored, reported as "> the last time"), with its median and 5 %
quantile over chips; and the **maintenance cost** over the ``service_life_s``: recalibrations
and their images and energy, reprogrammings and their pulses and energy. Every policy programs
the same chips (the seeds, common random numbers), so the policies differ by what is done to
the chips, not by which chips were drawn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from memxbar.crossbar import programming_cost, programming_stats
from memxbar.crossbar.cost import model_cost
from memxbar.experiments.chips import ChipJob, run_chips, verify_reads
from memxbar.experiments.estimators import chip_yield, ci95, mean_sd
from memxbar.experiments.runtime import write_json
from memxbar.experiments.settings import POLICIES

_log = logging.getLogger("memxbar.experiments.lifetime")

__all__ = ["POLICIES", "LifetimeJob", "lifetime_markdown", "lifetime_study", "lifetime_summary",
           "plot_lifetime", "reprogram_seed", "run_lifetime"]



def reprogram_seed(seed: int, k: int) -> int:
    """The seed of the ``k``-th re-programming of chip ``seed``: new draws, a pure function of
    both (so a re-programmed chip is the same in every run)."""
    digest = hashlib.blake2b(f"{int(seed)}/reprogram{int(k)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass(frozen=True)
class LifetimeJob:
    """One policy's lifetime of chips (sent once to each worker process, like a ``ChipJob``):
    ``chip`` programs and tests them (its design's ``drift_compensation`` as the policy
    needs), tested at ``times`` (s, ascending), ``floor`` the specification's accuracy (%),
    ``every_s`` the recalibration period."""

    chip: ChipJob
    policy: str
    times: tuple[float, ...]
    floor: float | None
    every_s: float

    @property
    def model(self) -> nn.Module:
        return self.chip.model

    def run(self, chips: Sequence[int], tick: Callable[[int], object] | None = None
            ) -> list[dict]:
        """Per chip (index from the job's seed): its accuracy at every time, its time to
        failure (None: never below the floor at the times tested) and the re-programmings."""
        out, xmodel = [], None
        reads = verify_reads(self.chip.design.device)
        for i in chips:
            seed = self.chip.seed + i
            xmodel, _ = self.chip.program(xmodel, seed)
            first = programming_cost(programming_stats(xmodel), verify_reads=reads)
            born, accuracies, failed_at = 0.0, [], None
            reprograms, pulses, energy = 0, 0, 0.0
            for t in self.times:
                age = t - born
                if self.policy == "recalibrate":
                    last = math.floor(age / self.every_s) * self.every_s
                    if last > 0:  # the fit of the last recalibration before this test
                        xmodel.set_inference_time(last)
                        self.chip.calibrate(xmodel)
                xmodel.set_inference_time(age)
                accuracy = self.chip.measure(xmodel, seed)[0]
                accuracies.append(accuracy)
                below = self.floor is not None and accuracy < self.floor
                if below and failed_at is None:
                    failed_at = t
                if below and self.policy == "reprogram":
                    reprograms += 1
                    xmodel, _ = self.chip.program(xmodel, reprogram_seed(seed, reprograms))
                    cost = programming_cost(programming_stats(xmodel), verify_reads=reads)
                    pulses += int(cost["pulses"])
                    energy += float(cost["energy_uJ"])
                    born = t
            out.append({"chip": i, "seed": seed, "accuracies": accuracies,
                        "programming_pulses": int(first["pulses"]),
                        "programming_energy_uJ": float(first["energy_uJ"]),
                        "time_to_failure_s": failed_at, "reprograms": reprograms,
                        "reprogram_pulses": pulses, "reprogram_energy_uJ": energy})
            if tick is not None:
                tick(1)
        return out


def run_lifetime(chip: ChipJob, *, policies: Sequence[str], times: Sequence[float],
                 floor: float | None, every_s: float, chips: int, workers: int = 1,
                 progress: bool = False) -> dict[str, list[dict]]:
    """Per policy, the per-chip lifetimes of ``chips`` chips (:class:`LifetimeJob`)."""
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        raise ValueError(f"study.lifetime.policies={list(policies)!r} is invalid; allowed: a "
                         f"non-empty list of {', '.join(POLICIES)}")
    if "reprogram" in policies and floor is None:
        raise ValueError("study.lifetime.policies holds 'reprogram', which re-programs a chip "
                         "below the specification, but eval.spec_max_drop and "
                         "eval.spec_min_accuracy are both null; allowed: set one of them")
    out = {}
    for policy in policies:
        xbar = chip.design.crossbar.with_(drift_compensation=policy != "none")
        job = LifetimeJob(dataclasses.replace(chip, design=chip.design.with_(crossbar=xbar)),
                          policy, tuple(float(t) for t in times), floor, float(every_s))
        out[policy] = run_chips(job, list(range(chips)), workers, progress,
                                f"lifetime {policy}")
    return out


def _quantile_time(times: list[float | None], q: float) -> float | None:
    """The ``q`` quantile of times to failure, a chip that never failed counted as after every
    time (None when the quantile falls on such a chip): the order statistic ``ceil(q n)``."""
    ordered = sorted(times, key=lambda t: math.inf if t is None else t)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def lifetime_summary(per_chip: dict[str, list[dict]], *, times: Sequence[float],
                     floor: float | None, dense_accuracy: float, spec: dict,
                     every_s: float, service_life_s: float, calibration_images: int,
                     energy_per_inference_nJ: float) -> dict:
    """What lifetime.json holds: per policy, the mean accuracy, its 95 % CI and the yield at
    every time, the times to failure (median, 5 % quantile), and the maintenance cost over
    the service life (per chip, means over chips)."""
    rows0 = next(iter(per_chip.values()))
    out = {"times_s": list(times), "floor": floor, "service_life_s": service_life_s,
           "recalibrate_every_s": every_s, "energy_per_inference_nJ": energy_per_inference_nJ,
           "initial_programming": {  # the same chips under every policy
               "pulses": mean_sd([r["programming_pulses"] for r in rows0])[0],
               "energy_uJ": mean_sd([r["programming_energy_uJ"] for r in rows0])[0]},
           "policies": {}}
    for policy, rows in per_chip.items():
        series = []
        for k, t in enumerate(times):
            accs = [r["accuracies"][k] for r in rows]
            mean, sd = mean_sd(accs)
            point = {"t_s": t, "mean": mean, "sample_std": sd, "ci95": ci95(accs),
                     "worst": min(accs)}
            if floor is not None:
                y = chip_yield(accs, dense_accuracy=dense_accuracy, **spec)
                point.update(yield_pct=y.yield_pct, yield_low_pct=y.ci_low_pct,
                             yield_high_pct=y.ci_high_pct)
            series.append(point)
        failures = [r["time_to_failure_s"] for r in rows]
        recal = math.floor(service_life_s / every_s) if policy == "recalibrate" else 0
        out["policies"][policy] = {
            "series": series,
            "time_to_failure_s": {"median": _quantile_time(failures, 0.5),
                                  "q05": _quantile_time(failures, 0.05),
                                  "failed_chips": sum(f is not None for f in failures),
                                  "chips": len(rows)},
            "maintenance_per_chip": {
                "recalibrations": recal,
                "recalibration_images": recal * calibration_images,
                "recalibration_energy_nJ": recal * calibration_images
                * energy_per_inference_nJ,
                "reprograms": mean_sd([r["reprograms"] for r in rows])[0],
                "reprogram_pulses": mean_sd([r["reprogram_pulses"] for r in rows])[0],
                "reprogram_energy_uJ": mean_sd([r["reprogram_energy_uJ"] for r in rows])[0]},
            "chips": rows}
    return out


def lifetime_study(exp, chips, dense_accuracy: float, note: str, run_dir: Path
                   ) -> tuple[dict, list[str], list[str]]:
    """A device study's ``study.lifetime``: every policy on ``eval.chips`` chips of each of
    ``study.models`` (``chips``: the study's ``StudyChips``), the specification's floor
    from ``dense_accuracy`` (the dense model in software on the chips' test images). Writes
    lifetime.json (with every chip) and lifetime.png / .pdf; returns the summary (without the
    chips), the figure names and study.md's lines."""
    s = exp.study.lifetime_settings
    floor = exp.eval.spec_floor(dense_accuracy)
    if floor is None and "reprogram" in s.policies:
        raise ValueError("study.lifetime.policies holds 'reprogram', which re-programs a chip "
                         "below the specification, but eval.spec_max_drop and "
                         "eval.spec_min_accuracy are both null; allowed: set one of them")
    if not exp.device.active("drift"):
        _log.warning("study.lifetime on a device with no drift model (device.drift is null): "
                     "the chips do not change with time; choose a device with drift (e.g. "
                     "device=rram_cmo or device=pcm_aihwkit)")
    spec = {"max_drop": exp.eval.spec_max_drop, "min_accuracy": exp.eval.spec_min_accuracy}
    full = {}
    for name in exp.study.models:
        job = chips.job(name, exp.device, exp.crossbar, exp.robustness)
        _log.info("lifetime of the %s model: %d chips, %d times, policies %s", name,
                  exp.eval.chips, len(s.times_s), ", ".join(s.policies))
        per_chip = run_lifetime(job, policies=s.policies, times=s.times_s, floor=floor,
                                every_s=s.recalibrate_every_s, chips=exp.eval.chips,
                                workers=exp.eval.workers, progress=exp.runtime.progress)
        energy = model_cost(job.plan, exp.crossbar.with_(drift_compensation=True),
                            exp.cost).total_energy_nJ
        full[name] = lifetime_summary(
            per_chip, times=s.times_s, floor=floor, dense_accuracy=dense_accuracy, spec=spec,
            every_s=s.recalibrate_every_s, service_life_s=s.service_life_s,
            calibration_images=exp.robustness.calibration_samples
            if exp.crossbar.output_calibration else 0, energy_per_inference_nJ=energy)
    write_json(run_dir / "lifetime.json", full)
    summary = {name: {**{k: v for k, v in m.items() if k != "policies"}, "policies": {
        p: {k: v for k, v in d.items() if k != "chips"} for p, d in m["policies"].items()}}
        for name, m in full.items()}
    names = []
    for name, m in summary.items():
        plot_lifetime(m, name, run_dir / f"lifetime_{name}.png", note)
        names.append(f"lifetime_{name}.png")
    return summary, names, lifetime_markdown(summary)


def _when(t: float | None, last: float) -> str:
    return f"> {_duration(last)}" if t is None else _duration(t)


def _duration(t: float) -> str:
    for unit, s in (("year", 365 * 86400.0), ("day", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t >= s:
            v = t / s
            return f"{v:.3g} {unit}" + ("s" if unit in ("year", "day") and v != 1 else "")
    return f"{t:.3g} s"


def lifetime_markdown(summary: dict) -> list[str]:
    """study.md's lifetime section: per model, a row per policy (final accuracy and yield,
    times to failure, maintenance per chip over the service life)."""
    lines = ["## Lifetime", ""]
    for name, m in summary.items():
        times, last = m["times_s"], m["times_s"][-1]
        lines += [f"### {name} model", "",
                  f"Chips tested at {', '.join(_duration(t) for t in times)} after "
                  f"programming; service life {_duration(m['service_life_s'])}; "
                  f"specification: accuracy >= "
                  + ("none" if m["floor"] is None else f"{m['floor']:.2f} %")
                  + f"; initial programming {m['initial_programming']['pulses']:.0f} pulses, "
                  f"{m['initial_programming']['energy_uJ']:.3g} uJ per chip "
                  "(crossbar.programming_cost).", "",
                  "| policy | accuracy at the first / last time (mean, 95 % CI) | yield at the "
                  "last time | time to failure: median / 5 % | chips failed | per chip over "
                  "the service life |", "|---|---|---:|---|---:|---|"]
        for policy, d in m["policies"].items():
            first, end = d["series"][0], d["series"][-1]
            ttf, cost = d["time_to_failure_s"], d["maintenance_per_chip"]
            upkeep = []
            if cost["recalibrations"]:
                upkeep.append(f"{cost['recalibrations']:,} recalibrations "
                              f"({cost['recalibration_images']:,} images, "
                              f"{cost['recalibration_energy_nJ'] / 1e3:.3g} uJ)")
            if policy == "reprogram":
                upkeep.append(f"{cost['reprograms']:.2f} re-programmings "
                              f"({cost['reprogram_pulses']:.0f} pulses, "
                              f"{cost['reprogram_energy_uJ']:.3g} uJ)")
            yld = f"{end['yield_pct']:.1f} % ({end['yield_low_pct']:.1f}-" \
                f"{end['yield_high_pct']:.1f})" if "yield_pct" in end else "-"
            lines.append(
                f"| {policy} | {first['mean']:.2f} +- {first['ci95']:.2f} / {end['mean']:.2f} "
                f"+- {end['ci95']:.2f} | {yld} | {_when(ttf['median'], last)} / "
                f"{_when(ttf['q05'], last)} | {ttf['failed_chips']} of {ttf['chips']} | "
                + ("; ".join(upkeep) or "none") + " |")
        lines.append("")
    lines += ["Policies (memxbar/experiments/lifetime.py): none; drift_compensation (one digital "
              "gain per layer); recalibrate (+ the output calibration fitted again every "
              "recalibrate_every_s); reprogram (+ drift compensation; a chip below the "
              "specification at a test time is re-programmed then). Time to failure: the "
              "first test time a chip is below the specification ('>': not within the "
              "times).", ""]
    return lines


def plot_lifetime(m: dict, name: str, path: Path, note: str) -> None:
    """Mean chip accuracy (95 % CI band) against time after programming (log axis), in full
    and, when a policy falls more than 2 points below the specification, zoomed around its
    floor, and the yield (Clopper-Pearson band); one line per policy, the floor dashed."""
    from memxbar.experiments.plots import caption, plt, write_png

    has_spec = m["floor"] is not None
    lowest = min(p["mean"] - p["ci95"] for d in m["policies"].values() for p in d["series"])
    zoom = has_spec and lowest < m["floor"] - 2.0  # a policy falls far below the spec
    panels = ["full"] + (["zoom"] if zoom else []) + (["yield"] if has_spec else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 3.2), squeeze=False)
    axes = dict(zip(panels, axes[0], strict=True))
    top = 0.0
    for k, (policy, d) in enumerate(m["policies"].items()):
        style = {"color": f"C{k}", "marker": "osD^"[k % 4], "markersize": 3}
        t = [p["t_s"] for p in d["series"]]
        mean = [p["mean"] for p in d["series"]]
        low = [p["mean"] - p["ci95"] for p in d["series"]]
        high = [p["mean"] + p["ci95"] for p in d["series"]]
        top = max(top, *high)
        for key in ("full", "zoom") if zoom else ("full",):
            axes[key].plot(t, mean, "-", label=policy, **style)
            axes[key].fill_between(t, low, high, color=style["color"], alpha=0.2)
        if has_spec:
            axes["yield"].plot(t, [p["yield_pct"] for p in d["series"]], "-", label=policy,
                               **style)
            axes["yield"].fill_between(t, [p["yield_low_pct"] for p in d["series"]],
                                       [p["yield_high_pct"] for p in d["series"]],
                                       color=style["color"], alpha=0.12)
    axes["full"].set_title(f"{name} model: mean over chips (95 % CI)", fontsize=9)
    axes["full"].set_ylabel("test accuracy (%)")
    if zoom:
        axes["zoom"].axhline(m["floor"], color="k", linestyle="--", linewidth=0.8)
        axes["zoom"].set_ylim(m["floor"] - 2.0, max(top, m["floor"]) + 0.3)
        axes["zoom"].set_title("the same, near the spec", fontsize=9)
    if has_spec:
        axes["full"].axhline(m["floor"], color="k", linestyle="--", linewidth=0.8,
                             label=f"spec {m['floor']:.2f} %")
        axes["yield"].set_ylabel("yield (%)")
        axes["yield"].set_ylim(-2, 102)
        axes["yield"].set_title("chips that meet the spec (95 % CI)", fontsize=9)
    for a in axes.values():
        a.set_xscale("log")
        a.set_xlabel("time after programming (s)")
    axes["full"].legend(fontsize=7)
    caption(fig, note)
    write_png(path, fig)
