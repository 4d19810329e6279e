"""Knowledge distillation from the dense model during compression training.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (NIPS Deep Learning
Workshop 2015): the compressed student ``s`` learns from the labels and from the softened output
distribution of the dense teacher ``t`` at temperature ``T``::

    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

The factor ``T^2`` keeps the soft term's gradient magnitude independent of ``T`` (the gradient of
the KL term scales as ``1 / T^2``). The teacher is a frozen copy of the model in eval mode
(:func:`frozen_copy`); its outputs are not differentiated.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor,
                      temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch (dimension 0;
    classes on dimension 1)."""
    T = float(temperature)
    student = F.log_softmax(student_logits / T, dim=1)
    teacher = F.log_softmax(teacher_logits.detach() / T, dim=1)
    return T * T * F.kl_div(student, teacher, reduction="batchmean", log_target=True)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with ``requires_grad=False`` on every parameter."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Distillation:
    """The combined loss above for a frozen ``teacher`` (module docstring): ``weight`` is
    ``alpha`` in ``[0, 1]``, ``temperature`` is ``T > 0``."""

    def __init__(self, teacher: nn.Module, weight: float, temperature: float) -> None:
        self.teacher, self.weight, self.temperature = teacher, float(weight), float(temperature)

    def loss(self, x: Tensor, student_logits: Tensor, task_loss: Tensor) -> Tensor:
        """``(1 - alpha) * task_loss + alpha * T^2 * KL`` with the teacher's logits on ``x``."""
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        soft = distillation_loss(student_logits, teacher_logits, self.temperature)
        return (1.0 - self.weight) * task_loss + self.weight * soft


__all__ = ["Distillation", "distillation_loss", "frozen_copy"]
