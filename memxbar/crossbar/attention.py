"""Multi-head attention whose projections run on crossbars.

``nn.MultiheadAttention`` keeps its Q, K, V projection as a parameter (``in_proj_weight``) and
its forward reads the weights itself (``F.multi_head_attention_forward``), so no crossbar layer
put in its place would ever run. :class:`CrossbarMultiheadAttention` takes its place in a
converted model: the projections are modules it calls, and :func:`crossbar.to_crossbar` maps
them like any Linear layer.

What runs where (Vaswani et al. 2017, eq. 1; ``E`` embedding, ``h`` heads, ``d = E / h``):

- on crossbars: ``[Q K V] = x W_in^T + b_in`` (``in_proj``, ``[3E, E]``; or ``q_proj``,
  ``k_proj``, ``v_proj`` when ``kdim``/``vdim`` differ from ``E``) and ``y = a W_out^T + b_out``
  (``out_proj``): static weight matrices;
- digital: ``a_i = softmax(Q_i K_i^T / sqrt(d) + mask) V_i`` per head ``i``, the masks,
  ``bias_k``/``bias_v``, ``add_zero_attn`` and dropout: products of two activations, which a
  crossbar (weights programmed once) does not compute.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .plan import attention_inputs, attention_projections, linear_copy


class CrossbarMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` (same forward signature and results) whose
    projections ``in_proj`` (or ``q_proj``/``k_proj``/``v_proj``) and ``out_proj`` are
    submodules: digital ``nn.Linear`` until :func:`crossbar.to_crossbar` replaces them with
    crossbar layers (those in ``digital=`` stay). ``in_proj_weight``, ``q_proj_weight``, ...,
    ``in_proj_bias`` read the weights the projections hold (a crossbar layer's ``weight``
    view), for code that inspects them."""

    def __init__(self, source: nn.MultiheadAttention) -> None:
        super().__init__()
        self.embed_dim, self.kdim, self.vdim = source.embed_dim, source.kdim, source.vdim
        self._qkv_same_embed_dim = source._qkv_same_embed_dim
        self.num_heads, self.head_dim = source.num_heads, source.head_dim
        self.dropout, self.batch_first = source.dropout, source.batch_first
        self.add_zero_attn = source.add_zero_attn
        self.bias_k = _copy(source.bias_k)
        self.bias_v = _copy(source.bias_v)
        for name, view in attention_projections(source):
            setattr(self, name, linear_copy(view))
        self.train(source.training)

    # ------------------------------------------------------------- nn.MultiheadAttention's view
    @property
    def in_proj_weight(self) -> torch.Tensor | None:
        return self.in_proj.weight if self._qkv_same_embed_dim else None

    @property
    def q_proj_weight(self) -> torch.Tensor | None:
        return None if self._qkv_same_embed_dim else self.q_proj.weight

    @property
    def k_proj_weight(self) -> torch.Tensor | None:
        return None if self._qkv_same_embed_dim else self.k_proj.weight

    @property
    def v_proj_weight(self) -> torch.Tensor | None:
        return None if self._qkv_same_embed_dim else self.v_proj.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        if self._qkv_same_embed_dim:
            return self.in_proj.bias
        biases = [self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]
        return None if biases[0] is None else torch.cat(biases)

    # ---------------------------------------------------------------------------------- forward
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward``: ``(output, attention weights or None)``,
        batched ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``) or unbatched ``(L, E)``."""
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"attention inputs of shapes {tuple(query.shape)}, {tuple(key.shape)}, "
                f"{tuple(value.shape)} are invalid; allowed: query, key and value all 3-D "
                "(batched) or all 2-D (unbatched)")
        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as "
                               "nn.MultiheadAttention)")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # the scaled-dot-product kernel builds the causal mask itself
        else:
            attn_mask = _float_mask(attn_mask, "attn_mask", query.dtype)
            is_causal = is_causal and key_padding_mask is None
        q, k, v = self._project(query, key, value)  # crossbars (or digital Linear)
        if not batched:
            q, k, v = (t.unsqueeze(1) for t in (q, k, v))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        out, weights = self._attend(q, k, v, key_padding_mask, attn_mask, need_weights,
                                    average_attn_weights, is_causal)
        out = self.out_proj(out)  # crossbar (or digital Linear)
        if not batched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V through the projections, called as :func:`crossbar.plan.attention_inputs`
        says (the count the cost model charges)."""
        calls = attention_inputs(self._qkv_same_embed_dim, query, key, value)
        outs = [getattr(self, name)(x) for name, x in calls]
        if not self._qkv_same_embed_dim:
            return outs[0], outs[1], outs[2]
        e = self.embed_dim
        if len(outs) == 1:
            return outs[0][..., :e], outs[0][..., e:2 * e], outs[0][..., 2 * e:]
        return outs[0][..., :e], outs[1][..., e:2 * e], outs[-1][..., 2 * e:]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
                need_weights: bool, average: bool, is_causal: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The digital part, ``(L, N, E)`` in and out: ``softmax(Q K^T / sqrt(d) + mask) V``
        per head, as ``F.multi_head_attention_forward`` computes it."""
        tgt_len, bsz, embed = q.shape
        heads, dim = self.num_heads, self.head_dim
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                attn_mask = attn_mask.unsqueeze(0)
            if attn_mask.shape[1:] != (tgt_len, k.shape[0]) or \
                    attn_mask.shape[0] not in (1, bsz * heads):
                raise ValueError(
                    f"attn_mask of shape {tuple(attn_mask.shape)} is invalid; allowed: "
                    f"({tgt_len}, {k.shape[0]}) or ({bsz * heads}, {tgt_len}, {k.shape[0]})")
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
        q = q.reshape(tgt_len, bsz * heads, dim).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * heads, dim).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * heads, dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros = q.new_zeros(bsz * heads, 1, dim)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
        src_len = k.shape[1]
        if key_padding_mask is not None:
            if key_padding_mask.shape != (bsz, src_len):
                raise ValueError(f"key_padding_mask of shape {tuple(key_padding_mask.shape)} is "
                                 f"invalid; allowed: ({bsz}, {src_len - self.add_zero_attn})")
            pad = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
            pad = pad.reshape(bsz * heads, 1, src_len)
            attn_mask = pad if attn_mask is None else attn_mask + pad
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q * math.sqrt(1.0 / dim)
            scores = torch.bmm(scores, k.transpose(-2, -1)) if attn_mask is None \
                else torch.baddbmm(attn_mask, scores, k.transpose(-2, -1))
            weights = F.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len, bsz, embed)
            weights = weights.view(bsz, heads, tgt_len, src_len)
            return out, (weights.mean(dim=1) if average else weights)
        if attn_mask is not None:
            attn_mask = attn_mask.unsqueeze(0) if attn_mask.shape[0] == 1 \
                else attn_mask.view(bsz, heads, -1, src_len)
        out = F.scaled_dot_product_attention(
            q.view(bsz, heads, tgt_len, dim), k.view(bsz, heads, src_len, dim),
            v.view(bsz, heads, src_len, dim), attn_mask, dropout_p, is_causal)
        return out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed), None

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}")


def _copy(p: nn.Parameter | None) -> nn.Parameter | None:
    return None if p is None else nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


def _float_mask(mask: torch.Tensor | None, name: str, dtype: torch.dtype
                ) -> torch.Tensor | None:
    """A boolean mask (True = not attended) as an additive float mask (``-inf``)."""
    if mask is None or mask.is_floating_point():
        return mask
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} of dtype {mask.dtype} is invalid; allowed: bool or float")
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


def _pad_masks(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One more key (``bias_k`` or the zero key), attended by every query."""
    return tuple(None if m is None else F.pad(m, (0, 1)) for m in (attn_mask, key_padding_mask))
