"""LSTM, GRU and RNN layers whose matrix products run on crossbars.

``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` keep their weights as parameters and their forward reads
them itself (one fused kernel over the whole sequence), so no crossbar layer put in their place
would ever run. :class:`CrossbarRecurrent` takes their place in a converted model: it runs the
recurrence step by step, and every weight matrix is a module it calls, which
:func:`crossbar.to_crossbar` maps like any Linear layer (:func:`crossbar.plan.recurrent_matrices`
names them ``<rnn>.ih_l0``, ``<rnn>.hh_l0``, ``<rnn>.ih_l0_reverse``, ...).

What runs where (PyTorch's equations; ``x`` the layer's input at step ``t``, ``h`` and ``c`` the
state of step ``t - 1``, ``*`` element-wise; ``W_i. x + b_i.`` is the ``ih`` matrix's output,
``W_h. h + b_h.`` the ``hh`` matrix's, both with their bias):

- LSTM (gates ``i, f, g, o``): ``i = s(W_ii x + b_ii + W_hi h + b_hi)``, ``f``, ``o`` alike,
  ``g = tanh(W_ig x + b_ig + W_hg h + b_hg)``, ``c' = f * c + i * g``, ``h' = o * tanh(c')``
  and, with ``proj_size``, ``h' = W_hr h'`` (the ``hr`` matrix);
- GRU (gates ``r, z, n``): ``r = s(W_ir x + b_ir + W_hr h + b_hr)``, ``z`` alike,
  ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` (``b_hn`` inside the reset product),
  ``h' = (1 - z) * n + z * h``;
- RNN: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or ``relu``).

On crossbars: the products ``W_ih x`` (all time steps of a layer in one call: each position is
its own matrix-vector product), ``W_hh h`` (one call per time step: it needs the previous
state) and ``W_hr h``. Digital: the biases (added after the ADCs, as for every crossbar layer),
the gate non-linearities, the element-wise state updates and the dropout between layers.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .plan import RECURRENT_GATES, linear_copy, recurrent_matrices

_PARAMETER = re.compile(r"(weight|bias)_(ih|hh|hr)(_l\d+(?:_reverse)?)")


class CrossbarRecurrent(nn.Module):
    """Drop-in for an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN`` (same forward signature and
    results: any ``num_layers``, ``bidirectional``, ``batch_first``, ``bias``, ``dropout``
    between layers in training mode, an LSTM's ``proj_size``; batched, unbatched or
    ``PackedSequence`` input; an initial state ``h0`` or ``(h0, c0)``) whose matrices
    ``ih_l{k}``, ``hh_l{k}`` (and ``hr_l{k}``; ``_reverse`` for the backward direction) are
    submodules: digital ``nn.Linear`` until :func:`crossbar.to_crossbar` replaces them with
    crossbar layers (those in ``digital=`` stay). ``weight_ih_l0``, ``bias_hh_l1_reverse``, ...
    read the weights the submodules hold (a crossbar layer's ``weight`` view)."""

    def __init__(self, source: nn.RNNBase) -> None:
        super().__init__()
        if not isinstance(source, nn.RNNBase) or source.mode not in RECURRENT_GATES:
            raise TypeError(f"CrossbarRecurrent replaces an nn.LSTM, nn.GRU or nn.RNN, got "
                            f"{type(source).__name__}")
        self.mode = source.mode
        self.input_size, self.hidden_size = source.input_size, source.hidden_size
        self.num_layers, self.bias = source.num_layers, source.bias
        self.batch_first, self.dropout = source.batch_first, float(source.dropout)
        self.bidirectional, self.proj_size = source.bidirectional, source.proj_size
        for name, view in recurrent_matrices(source):
            setattr(self, name, linear_copy(view))
        self.train(source.training)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of ``h`` per direction (``proj_size`` when set, else ``hidden_size``)."""
        return self.proj_size or self.hidden_size

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            match = _PARAMETER.fullmatch(name)
            if match is None:
                raise
            kind, matrix, tail = match.groups()
            return getattr(super().__getattr__(matrix + tail), kind)

    def flatten_parameters(self) -> None:
        """No-op (``nn.RNNBase.flatten_parameters`` packs weights for cuDNN; models call it in
        their forward)."""

    # ---------------------------------------------------------------------------------- forward
    def forward(self, input: torch.Tensor | PackedSequence,  # noqa: A002 (PyTorch's name)
                hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None):
        """``nn.LSTM.forward`` (``output, (h_n, c_n)``) or ``nn.GRU``/``nn.RNN.forward``
        (``output, h_n``)."""
        packed = isinstance(input, PackedSequence)
        if packed:
            data, sizes, sorted_idx, unsorted_idx = input
            steps = sizes.tolist()
            batched = True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{self.mode}: input of shape {tuple(input.shape)} is invalid; "
                                 "allowed: 3-D (batched) or 2-D (unbatched)")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
            if self.batch_first:
                x = x.transpose(0, 1)
            length, n = x.shape[0], x.shape[1]
            data, steps = x.reshape(length * n, x.shape[2]), [n] * length
            sorted_idx = unsorted_idx = None
        if data.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {data.shape[-1]}")
        h0, c0 = self._initial_state(hx, steps[0] if steps else 0, batched, data)
        if sorted_idx is not None:  # the state follows the packed (length-sorted) order
            h0 = h0.index_select(1, sorted_idx)
            c0 = c0.index_select(1, sorted_idx) if c0 is not None else None
        h_n, c_n = [], []
        layer_input = data
        for k in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                i = k * self.num_directions + d
                out, h, c = self._direction(layer_input, steps, h0[i],
                                            None if c0 is None else c0[i],
                                            f"_l{k}{'_reverse' if d else ''}", reverse=d == 1)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
            if self.dropout and self.training and k < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if self.mode == "LSTM" else None
        if packed:
            output = PackedSequence(layer_input, sizes, sorted_idx, unsorted_idx)
            if unsorted_idx is not None:
                h_n = h_n.index_select(1, unsorted_idx)
                c_n = c_n.index_select(1, unsorted_idx) if c_n is not None else None
        else:
            output = layer_input.reshape(length, n, -1)
            if self.batch_first:
                output = output.transpose(0, 1)
            if not batched:
                output = output.squeeze(0 if self.batch_first else 1)
                h_n = h_n.squeeze(1)
                c_n = c_n.squeeze(1) if c_n is not None else None
        return output, ((h_n, c_n) if self.mode == "LSTM" else h_n)

    def _initial_state(self, hx, n: int, batched: bool, data: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(h0, c0)`` as ``[layers*directions, N, features]`` (zeros when not given; ``c0``
        is ``None`` but for an LSTM), checked against PyTorch's shapes."""
        lstm = self.mode == "LSTM"
        states = self.num_layers * self.num_directions
        shapes = [(states, n, self.output_size)] + ([(states, n, self.hidden_size)] if lstm
                                                    else [])
        if hx is None:
            zeros = [data.new_zeros(s) for s in shapes]
            return zeros[0], zeros[1] if lstm else None
        given = list(hx) if lstm and isinstance(hx, (tuple, list)) else [hx]
        if len(given) != len(shapes) or not all(isinstance(t, torch.Tensor) for t in given):
            want = "a tuple (h0, c0) of tensors" if lstm else "a tensor h0"
            raise ValueError(f"{self.mode}: hx of type {type(hx).__name__} is invalid; "
                             f"allowed: {want}")
        out = []
        for name, t, shape in zip(("h0", "c0"), given, shapes, strict=False):
            if not batched:
                if t.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, {name} should also be 2-D "
                                       f"but got {t.dim()}-D tensor")
                t = t.unsqueeze(1)
            if tuple(t.shape) != shape:
                raise RuntimeError(f"Expected hidden size {shape}, got {tuple(t.shape)}"
                                   f" ({name})")
            out.append(t.to(data.dtype))
        return out[0], out[1] if lstm else None

    def _direction(self, data: torch.Tensor, steps: list[int], h: torch.Tensor,
                   c: torch.Tensor | None, tail: str, reverse: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One layer and direction over the time-major packed ``data`` (``steps[t]``
        sequences active at step ``t``, the longest first): ``(outputs, h_n, c_n)``."""
        ih, hh = getattr(self, "ih" + tail), getattr(self, "hh" + tail)
        hr = getattr(self, "hr" + tail) if self.proj_size else None
        gates_x = ih(data)  # every position's input product (one crossbar MVM each)
        starts = [0]
        for size in steps[:-1]:
            starts.append(starts[-1] + size)
        order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
        outs: list[torch.Tensor] = [None] * len(steps)  # type: ignore[list-item]
        for t in order:
            size, start = steps[t], starts[t]
            h_prev = h[:size]
            gx, gh = gates_x[start:start + size], hh(h_prev)  # one crossbar MVM per sequence
            c_new = None
            if self.mode == "LSTM":
                i, f, g, o = (gx + gh).chunk(4, dim=1)
                c_new = torch.sigmoid(f) * c[:size] + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                if hr is not None:
                    h_new = hr(h_new)
            elif self.mode == "GRU":
                xr, xz, xn = gx.chunk(3, dim=1)
                hr_, hz, hn = gh.chunk(3, dim=1)  # hn = W_hn h + b_hn
                r, z = torch.sigmoid(xr + hr_), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h_new = (1 - z) * n + z * h_prev
            else:
                pre = gx + gh
                h_new = torch.tanh(pre) if self.mode == "RNN_TANH" else torch.relu(pre)
            outs[t] = h_new
            h = h_new if size == h.shape[0] else torch.cat([h_new, h[size:]])
            if c_new is not None:
                c = c_new if size == c.shape[0] else torch.cat([c_new, c[size:]])
        out = torch.cat(outs) if outs else data.new_zeros(0, self.output_size)
        return out, h, c

    def extra_repr(self) -> str:
        kind = {"RNN_TANH": "RNN", "RNN_RELU": "RNN relu"}.get(self.mode, self.mode)
        text = (f"{kind}: {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}")
        return text + (f", proj_size={self.proj_size}" if self.proj_size else "")


__all__ = ["CrossbarRecurrent"]
