"""Replacement self-attention processors, installed on chosen UNet layers for one call only.

Attention-injection methods (StyleID, Cross-Image Attention, ...) change what a few self-attention
layers of the UNet compute. They do it through diffusers' attention-processor API
(``unet.attn_processors`` / ``unet.set_attn_processor``): :func:`attention_processors` installs
replacement processors on named layers and always puts the original ones back when the ``with``
block ends, also on an exception, so one method cannot leak into the next within a process.

:class:`InjectableAttnProcessor` computes exactly what diffusers' ``AttnProcessor2_0`` computes
(same operations in the same order, ``F.scaled_dot_product_attention``) and adds two optional
hooks for the layer it sits on:

- ``record``: a dict that receives the layer's projected ``q``/``k``/``v`` (``(B, N, C)``, before
  the split into heads) of the next call, for the inversion pass;
- ``inject``: an :class:`Injection` that, in this order,
  1. rewrites the layer's (normalised) input hidden states before q/k/v are projected
     (``rewrite_hidden``; Eye-for-an-eye's feature rearrangement, so q, k and v all come from the
     rearranged features);
  2. replaces ``k``/``v`` with given tensors (a style image's, possibly several concatenated along
     the token axis; StyleID) or with those of other rows of the same batch (``kv_rows``;
     Cross-Image Attention's joint batch);
  3. blends the query ``gamma * q_given + (1 - gamma) * q_own`` (StyleID);
  4. multiplies the attention logits by a temperature (``scale = temperature / sqrt(head_dim)``;
     StyleID) and/or contrasts the attention map of chosen rows (``contrast``; Cross-Image
     Attention): ``A' = clamp((A - mean_k A) * contrast + mean_k A, 0, 1)``, not renormalised.

With neither set, the output is identical to ``AttnProcessor2_0`` (tested).

Layer names are module paths without the ``.processor`` suffix, e.g.
``up_blocks.2.attentions.0.transformer_blocks.0.attn1``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "InjectableAttnProcessor",
    "Injection",
    "attention_processors",
    "contrasted_attention",
    "self_attention_layers",
]

_SUFFIX = ".processor"
_SELF_ATTENTION = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn1$")


def self_attention_layers(unet: torch.nn.Module, selectors: Sequence[str | int]) -> list[str]:
    """Self-attention (``attn1``) layer names of the UNet selected by ``selectors``, in UNet order.

    A selector is a decoder block index (``2``), a module-path prefix (``"up_blocks.2"``,
    ``"up_blocks.3.attentions.1"``) or a full layer name. For SD1.5, ``[2, 3]`` gives the 7th to
    12th decoder self-attention layers. A selector that matches no self-attention layer raises.
    """
    names = [k[: -len(_SUFFIX)] for k in unet.attn_processors]
    self_attn = [n for n in names if n.endswith(".attn1")]
    chosen: list[str] = []
    for sel in selectors:
        prefix = f"up_blocks.{sel}" if isinstance(sel, int) else str(sel)
        hits = [n for n in self_attn if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            decoder = sorted({m.group(1) for n in self_attn if (m := _SELF_ATTENTION.match(n))})
            raise ValueError(f"{sel!r} selects no self-attention layer; decoder blocks with attention: "
                             f"{', '.join('up_blocks.' + d for d in decoder)}")
        chosen.extend(h for h in hits if h not in chosen)
    order = {n: i for i, n in enumerate(self_attn)}
    return sorted(chosen, key=order.__getitem__)


@dataclass
class Injection:
    """What an :class:`InjectableAttnProcessor` substitutes in its layer's attention.

    - ``rewrite_hidden``: ``(B, N, C) -> (B, N, C)``, applied to the layer's normalised input hidden
      states before the q/k/v projections (self-attention only);
    - ``key``/``value``: ``(B or 1, M, C)`` projected keys/values that replace the layer's own
      (``None`` keeps them);
    - ``kv_rows``: one source row per batch row: row ``r`` takes the keys/values of row
      ``kv_rows[r]`` of the same call (after ``key``/``value``);
    - ``query``: ``(B or 1, N, C)`` query blended in as ``gamma * query + (1 - gamma) * q_own``
      (``None`` or ``gamma = 0`` keeps the layer's own query);
    - ``temperature`` multiplies the logits ``q k^T / sqrt(d)``;
    - ``contrast`` (``!= 1``) contrasts the attention maps of ``contrast_rows`` (``None``: all rows),
      see :func:`contrasted_attention`.
    """

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    query: torch.Tensor | None = None
    gamma: float = 0.0
    temperature: float = 1.0
    rewrite_hidden: Callable[[torch.Tensor], torch.Tensor] | None = None
    kv_rows: Sequence[int] | None = None
    contrast: float = 1.0
    contrast_rows: Sequence[int] | None = None


class InjectableAttnProcessor:
    """``AttnProcessor2_0`` with optional recording and injection (see the module docstring)."""

    def __init__(self, name: str = ""):
        self.name = name
        self.record: dict[str, torch.Tensor] | None = None
        self.record_keys: tuple[str, ...] = ("q", "k", "v")
        self.inject: Injection | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        inj = self.inject
        if inj is not None and inj.rewrite_hidden is not None:
            if encoder_hidden_states is not None:
                raise ValueError(f"{self.name}: rewrite_hidden is for self-attention layers only")
            hidden_states = inj.rewrite_hidden(hidden_states)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        if self.record is not None:
            own = {"q": query, "k": key, "v": value}
            self.record.update({k: own[k].detach() for k in self.record_keys})

        scale = None
        if inj is not None:
            if inj.key is not None:
                key = _batch(inj.key, batch_size).to(key.dtype)
            if inj.value is not None:
                value = _batch(inj.value, batch_size).to(value.dtype)
            if inj.kv_rows is not None:
                if len(inj.kv_rows) != batch_size:
                    raise ValueError(f"{self.name}: kv_rows has {len(inj.kv_rows)} rows, the layer runs batch {batch_size}")
                rows = torch.as_tensor(list(inj.kv_rows), device=key.device)
                key, value = key[rows], value[rows]
            if inj.query is not None and inj.gamma:
                query = inj.gamma * _batch(inj.query, batch_size).to(query.dtype) + (1.0 - inj.gamma) * query
            changes_kv = inj.key is not None or inj.value is not None or inj.kv_rows is not None
            if attention_mask is not None and (changes_kv or inj.contrast != 1.0):
                raise ValueError(f"{self.name}: key/value injection or contrast with an attention mask is not supported")

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        if inj is not None and inj.temperature != 1.0:
            scale = inj.temperature / math.sqrt(head_dim)
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # scale=None is SDPA's default 1/sqrt(head_dim): the AttnProcessor2_0 call exactly.
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=scale
        )
        if inj is not None and inj.contrast != 1.0:
            rows = list(range(batch_size)) if inj.contrast_rows is None else list(inj.contrast_rows)
            hidden_states = hidden_states.clone()
            hidden_states[rows] = contrasted_attention(query[rows], key[rows], value[rows], inj.contrast,
                                                       scale or 1.0 / math.sqrt(head_dim))
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def contrasted_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, contrast: float, scale: float,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Attention with a contrasted map (Alaluf et al., "Cross-Image Attention", 2024, Sec. 4).

    ``A = softmax(scale q k^T)``, ``A' = clamp((A - mean_k A) * contrast + mean_k A, 0, 1)`` per query
    (the mean over keys is ``1/M``: each row of ``A`` sums to one), output ``A' v``; ``A'`` is not
    renormalised, as in the authors' code. ``(..., N, d)`` inputs; computed in chunks of
    ``chunk_size`` queries so the ``N x M`` map never materialises whole.
    """
    out = []
    for s in range(0, query.shape[-2], chunk_size):
        probs = torch.softmax((query[..., s:s + chunk_size, :] @ key.transpose(-1, -2)) * scale, dim=-1)
        mean = probs.mean(dim=-1, keepdim=True)
        out.append(((probs - mean) * contrast + mean).clamp(0.0, 1.0) @ value)
    return torch.cat(out, dim=-2)


def _batch(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    if x.shape[0] == batch_size:
        return x
    if x.shape[0] == 1:
        return x.expand(batch_size, *x.shape[1:])
    raise ValueError(f"injected tensor has batch {x.shape[0]}, the layer runs batch {batch_size}")


@contextmanager
def attention_processors(unet: torch.nn.Module, processors: Mapping[str, object]) -> Iterator[dict]:
    """Install ``processors`` (layer name -> processor) on ``unet`` for the ``with`` block.

    The other layers keep their processors; on exit, normal or by exception, every layer gets back
    exactly the processor object it had before. Yields a dict of the installed processors.
    """
    original = dict(unet.attn_processors)
    installed = {}
    for name, proc in processors.items():
        full = name if name.endswith(_SUFFIX) else name + _SUFFIX
        if full not in original:
            raise KeyError(f"no attention layer {name!r} in the UNet")
        installed[full] = proc
    # set_attn_processor pops from the dict it is given: always hand it a fresh copy.
    unet.set_attn_processor({**original, **installed})
    try:
        yield {k[: -len(_SUFFIX)]: v for k, v in installed.items()}
    finally:
        unet.set_attn_processor(dict(original))
