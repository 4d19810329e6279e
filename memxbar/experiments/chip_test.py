"""Each chip's test accuracy at a fraction of the images: stratified sampling (issue 24).

A Monte Carlo over thousands of chips spends most of its time running every chip on every test
image, although most images are classified the same way by every chip: on the compressed
LeNet-5 of the MNIST experiment, 76 % of a chip's time is the 10,000-image evaluation
(BENCHMARKS.md, "Chips by the thousand"). Stratified sampling keeps the estimate of each chip's
accuracy unbiased at a fraction of the cost:

* **Strata, from the software model alone** (:func:`make_strata`). Each test image's margin is
  the model's logit of the true class minus its largest other logit. The ``risky_fraction`` of
  the images with the smallest margins (every image the model gets wrong among them) form the
  *risky* stratum ``R``; the others, the *safe* stratum ``S``. No chip is looked at, so the
  strata are the same for every design point of a study.
* **Per chip** (:func:`chip_indices`): every image of ``R`` and ``m = ceil(safe_fraction |S|)``
  images of ``S`` drawn without replacement from the chip's seed (the same images for the same
  chip at every design point: common random numbers).
* **Estimate** (:func:`estimate`, a Horvitz-Thompson estimator): with ``c_R`` and ``c_m`` the
  correct images among ``R`` and among the sample, ``acc = (c_R + |S| / m * c_m) / N``. As the
  sample is uniform without replacement, ``E[c_m] = m / |S| * c_S``: the estimate's mean is the
  chip's accuracy on all ``N`` images, for every chip (Cochran, *Sampling Techniques*, 3rd ed.,
  1977, sections 5.2-5.3; checked by enumerating every sample in the tests).
* **Its standard error** (:func:`standard_error`), from the pooled error rate ``q`` of the safe
  samples of all chips: ``se = |S| / N * sqrt((1 - m / |S|) * s2 / m)`` with
  ``s2 = q (1 - q) |S| / (|S| - 1)`` (Cochran eq. 5.5 with the finite population correction);
  ``q`` is shrunk as ``(errors + 1/2) / (draws + 1)`` so that no error in the samples does not
  read as an exact estimate.
* **Chips near the specification are measured exactly.** A chip whose estimate lies within
  :data:`EXACT_WITHIN_SE` standard errors of the yield's accuracy floor is run again on all the
  images (``ChipRecord.exact_accuracy``) and passes or fails on that figure; a chip further away
  is misclassified with probability below 0.14 % (one-sided normal tail at 3 standard errors).

The chip spread reported is that of the estimates, whose variance is the chips' own plus the
sampling variance ``se ** 2``; metrics.json states both.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["EXACT_WITHIN_SE", "Strata", "chip_indices", "estimate", "make_strata",
           "standard_error", "test_tensors"]

EXACT_WITHIN_SE = 3.0
"""A chip whose estimate is this many standard errors or fewer from the specification's floor
is evaluated on every test image before it passes or fails."""


@dataclass(frozen=True)
class Strata:
    """The ``risky`` test images (every chip runs them) and the ``safe`` ones (each chip runs
    ``sample`` of them), as sorted index tensors into the ``total`` test images."""

    risky: torch.Tensor
    safe: torch.Tensor
    sample: int
    total: int

    @property
    def images_per_chip(self) -> int:
        return len(self.risky) + self.sample

    def to_dict(self) -> dict:
        return {"risky_images": len(self.risky), "safe_images": len(self.safe),
                "safe_sample": self.sample, "images_per_chip": self.images_per_chip,
                "test_images": self.total}


def test_tensors(test: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """The test loader's (inputs, labels) in order, as two tensors."""
    ds = test.dataset
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0], ds.tensors[1]
    items = [ds[i] for i in range(len(ds))]
    return (torch.stack([torch.as_tensor(x) for x, _ in items]),
            torch.as_tensor([int(y) for _, y in items]))


@torch.no_grad()
def margins(model: nn.Module, test: DataLoader) -> torch.Tensor:
    """Per test image (in order), the true class's logit minus the largest other logit of
    ``model`` (negative: misclassified)."""
    was_training = model.training
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    for x, y in test:
        logits = model(x.to(dev)).float()
        y = y.to(dev)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        out.append((true - other).cpu())
    model.train(was_training)
    return torch.cat(out)


def make_strata(model: nn.Module, test: DataLoader, risky_fraction: float,
                safe_fraction: float) -> Strata:
    """The strata of ``test`` from ``model``'s margins (the software model, before any chip):
    the ``risky_fraction`` of the images with the smallest margins, ties broken by index, and
    ``safe_fraction`` of the rest sampled per chip (at least one image while any is left)."""
    for key, value in (("risky_fraction", risky_fraction), ("safe_fraction", safe_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 < value <= 1.0:
            raise ValueError(f"eval.{key}={value!r} is invalid; allowed: a number in (0, 1]")
    m = margins(model, test)
    n = len(m)
    if n == 0:
        raise ValueError("make_strata: the test loader yielded no samples")
    order = sorted(range(n), key=lambda i: (float(m[i]), i))
    n_risky = min(n, max(1, math.ceil(risky_fraction * n)))
    risky = torch.tensor(sorted(order[:n_risky]), dtype=torch.long)
    safe = torch.tensor(sorted(order[n_risky:]), dtype=torch.long)
    sample = min(len(safe), math.ceil(safe_fraction * len(safe)))
    return Strata(risky, safe, sample, n)


def chip_indices(strata: Strata, chip_seed: int) -> torch.Tensor:
    """The test images of the chip with ``chip_seed``: the risky stratum, then the chip's
    sample of the safe one (drawn from the seed alone, so the same chip gets the same images
    at every design point)."""
    digest = hashlib.blake2b(f"{int(chip_seed)}/chip-test".encode(), digest_size=8).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    pick = torch.randperm(len(strata.safe), generator=gen)[:strata.sample]
    return torch.cat([strata.risky, strata.safe[pick.sort().values]])


def estimate(strata: Strata, correct_risky: int, correct_sample: int) -> float:
    """A chip's accuracy (%) on all the test images, estimated from its ``correct_risky``
    images of the risky stratum and ``correct_sample`` of its safe sample."""
    safe = len(strata.safe)
    scaled = safe / strata.sample * correct_sample if strata.sample else 0.0
    return 100.0 * (correct_risky + scaled) / strata.total


def standard_error(strata: Strata, errors: int, draws: int) -> float:
    """The standard error (points) of one chip's estimate, from the ``errors`` among ``draws``
    safe-sample images of every chip (pooled; 0 when every safe image is run)."""
    safe, m = len(strata.safe), strata.sample
    if m == 0 or m >= safe:
        return 0.0
    q = (errors + 0.5) / (draws + 1.0)
    s2 = q * (1.0 - q) * safe / (safe - 1)
    return 100.0 * safe / strata.total * math.sqrt((1.0 - m / safe) * s2 / m)
