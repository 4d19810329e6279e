"""Kernel decomposition of convolutions into per-input-channel basis kernels and a coefficient
matrix (ESCALATE: S. Li, E. Hanson, X. Qian, H. Li, Y. Chen, "ESCALATE: Boosting the
Efficiency of Sparse CNN Accelerator with Kernel Decomposition", MICRO 2021).

A ``k x k`` convolution ``W[O, C, kh, kw]`` is written with ``M`` basis kernels per input
channel::

    W[o, c, :, :] = sum_m A[o, c, m] * B[c, m, :, :]

and run as two convolutions: stage 1, a depthwise convolution with ``B`` (``C * M`` output
channels, ``groups = C``, the original stride, padding and dilation), stage 2, a ``1 x 1``
convolution over the ``C * M`` channels with ``A`` (and the bias). Stage 2's matrix view is
``A[O, C*M]``: on a crossbar it drives ``C * M`` word lines instead of the ``C * kh * kw`` of
the original layer.

The basis of a trained weight (:func:`basis_decomposition`): for each input channel ``c``, the
slice ``W_c = W[:, c].reshape(O, kh*kw)`` has the SVD ``W_c = U S V^T``; ``B[c] = V_M^T`` (the
``M`` leading right singular vectors) and ``A[:, c] = W_c V_M = U_M S_M``. By the
Eckart-Young-Mirsky theorem this is the best approximation of ``W_c`` of rank ``M`` in the
Frobenius norm, ``||W_c - A_c B_c||_F^2 = sum_{i > M} s_i^2``, and the channels are independent
(each has its own basis), so the whole layer's error ``sum_c sum_{i > M} s_{c,i}^2`` is the least
any per-channel basis of ``M`` kernels reaches. With ``M = kh*kw`` the basis is complete (``V``
square, orthogonal) and the decomposition is exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["DecomposedConv2d", "basis_decomposition", "decomposable", "decompose_model"]


def basis_decomposition(weight: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """``(B, A)`` of ``weight [O, C, kh, kw]`` with ``m`` basis kernels per input channel:
    ``B [C, m, kh, kw]`` (orthonormal rows per channel) and ``A [O, C, m]`` with
    ``W[o, c] ~= sum_m A[o, c, m] B[c, m]``, the best rank-``m`` approximation of each
    channel's ``[O, kh*kw]`` slice in the Frobenius norm (Eckart-Young; module docstring).
    Computed in float64 and returned in ``weight``'s dtype. Each basis kernel's sign is fixed
    (its entry of largest magnitude positive), so the result does not depend on the SVD
    routine's sign choice."""
    if weight.dim() != 4:
        raise ValueError(f"weight of shape {tuple(weight.shape)} is invalid; allowed: a Conv2d "
                         "weight [out, in, kh, kw]")
    out_c, in_c, kh, kw = weight.shape
    k2 = kh * kw
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= k2:
        raise ValueError(f"m={m!r} is invalid; allowed: an integer in [1, {k2}] (kh*kw)")
    slices = weight.detach().to(torch.float64).permute(1, 0, 2, 3).reshape(in_c, out_c, k2)
    # full_matrices: a complete basis of R^{k^2} even when O < k^2 (exact at m = k^2)
    _, _, vh = torch.linalg.svd(slices, full_matrices=True)
    basis = vh[:, :m, :]                                          # [C, m, k2]
    peak = basis.abs().argmax(dim=2, keepdim=True)
    basis = basis * torch.sign(basis.gather(2, peak))
    coeff = torch.einsum("cok,cmk->ocm", slices, basis)            # A[:, c] = W_c B_c^T
    return (basis.reshape(in_c, m, kh, kw).to(weight.dtype), coeff.to(weight.dtype))


class DecomposedConv2d(nn.Module):
    """A ``Conv2d`` as two convolutions (module docstring): ``basis``, a depthwise ``Conv2d``
    ``C -> C*M`` (``groups = C``, the original kernel, stride, padding, dilation and padding
    mode, no bias) and ``coeff``, a ``1 x 1`` ``Conv2d`` ``C*M -> O`` carrying the original
    bias. ``forward(x) = coeff(basis(x))``; with ``M = kh*kw`` it equals the original
    convolution (to float rounding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 m: int, stride: tuple[int, int] = (1, 1), padding: tuple[int, int] | str = 0,
                 dilation: tuple[int, int] = (1, 1), bias: bool = True,
                 padding_mode: str = "zeros", device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        k2 = math.prod(kernel_size)
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= k2:
            raise ValueError(f"m={m!r} is invalid; allowed: an integer in [1, {k2}] (kh*kw)")
        self.m = m
        self.basis = nn.Conv2d(in_channels, in_channels * m, kernel_size, stride, padding,
                               dilation, groups=in_channels, bias=False,
                               padding_mode=padding_mode, device=device, dtype=dtype)
        self.coeff = nn.Conv2d(in_channels * m, out_channels, 1, bias=bias, device=device,
                               dtype=dtype)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, m: int, fill: bool = True) -> DecomposedConv2d:
        """The decomposition of ``conv`` (groups 1) with ``m`` basis kernels per input
        channel; ``fill``: set the weights from :func:`basis_decomposition` and copy the bias
        (False: shapes only, e.g. on the ``meta`` device)."""
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise ValueError(f"{type(conv).__name__} with groups={getattr(conv, 'groups', None)}"
                             " is invalid; allowed: an nn.Conv2d with groups=1")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, m, conv.stride,
                  conv.padding, conv.dilation, conv.bias is not None, conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        if fill:
            basis, coeff = basis_decomposition(conv.weight, m)
            with torch.no_grad():
                new.basis.weight.copy_(basis.reshape(new.basis.weight.shape))
                new.coeff.weight.copy_(coeff.reshape(new.coeff.weight.shape))
                if conv.bias is not None:
                    new.coeff.bias.copy_(conv.bias)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self.coeff(self.basis(x))

    def extra_repr(self) -> str:
        return f"m={self.m}"


def decomposable(model: nn.Module) -> list[str]:
    """Names of the ``Conv2d`` layers of ``model`` that :func:`decompose_model` can replace:
    groups 1 and a kernel larger than ``1 x 1`` (a ``1 x 1`` convolution has nothing to
    decompose, a grouped one is already a set of small matrices)."""
    return [n for n, m in model.named_modules()
            if n and isinstance(m, nn.Conv2d) and m.groups == 1 and math.prod(m.kernel_size) > 1]


def decompose_model(model: nn.Module, ranks: Mapping[str, int], fill: bool = True) -> None:
    """Replace, in place, each ``Conv2d`` named in ``ranks`` (name -> ``M``) by its
    :class:`DecomposedConv2d` (``fill``: from its trained weight; else shapes only). The result
    depends only on the weights and ``ranks``: a resumed run rebuilds the same modules before
    loading its checkpoint. Fails naming a layer that is not decomposable or an ``M`` out of
    ``[1, kh*kw]``, before any layer is replaced."""
    modules = dict(model.named_modules())
    allowed = set(decomposable(model))
    for name, m in ranks.items():
        if name not in allowed:
            raise ValueError(f"layer {name!r} is invalid; allowed: a Conv2d with groups=1 and a "
                             f"kernel larger than 1x1, one of {sorted(allowed)}")
        k2 = math.prod(modules[name].kernel_size)
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= k2:
            raise ValueError(f"M={m!r} of layer {name!r} is invalid; allowed: an integer in "
                             f"[1, {k2}] (its kh*kw)")
    for name, m in ranks.items():
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, DecomposedConv2d.from_conv(modules[name], m, fill))
