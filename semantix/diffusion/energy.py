"""The Semantix energy terms (He et al., "Semantix: An Energy-guided Sampler for Semantic Style
Transfer", ICLR 2025, Sec. 3 as read in docs/method.md) and guidance helpers.

All terms take channel-first feature maps ``(..., C, h, w)`` (``(C, h, w)``, ``(B, C, h, w)``, or
``(B, F, C, h, w)``); features are L2-normalised per location (cosine similarity over the channel
axis), and the mean runs over every location and every leading index. They are differentiable in
``f_out``; the other argument is treated as given (pass it detached).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "clamp_grad",
    "TermGradients",
    "clamped_energy_gradient",
    "gather_matched",
    "semantic_distance_energy",
    "spatial_energy",
    "style_energy",
]

_EPS = 1e-8

log = logging.getLogger(__name__)


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape:
        raise ValueError(f"feature maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (1.0 - F.cosine_similarity(a, b, dim=-3, eps=_EPS)).mean()


def gather_matched(
    f_ref_flat: torch.Tensor, indices: torch.Tensor, hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """Reference features at the matched locations: ``F^r_{m(p)}``.

    ``f_ref_flat (..., M, C)``: reference locations (several references concatenated along M for
    multi-reference; see ``matching.flatten_locations``); ``indices (..., N)`` from
    ``matching.nearest_neighbours``. Returns ``(..., N, C)``, or ``(..., C, h, w)`` when
    ``hw = (h, w)`` with ``h * w = N`` (the layout of the other energy arguments).
    """
    out = torch.take_along_dim(f_ref_flat, indices[..., None], dim=-2)
    if hw is None:
        return out
    h, w = hw
    return out.transpose(-1, -2).unflatten(-1, (h, w))


def style_energy(f_out: torch.Tensor, f_ref_matched: torch.Tensor) -> torch.Tensor:
    """Style Feature Guidance ``E_style = mean_p (1 - cos(F^o_p, F^r_{m(p)}))`` (Semantix, Sec. 3).

    ``f_ref_matched``: the reference features gathered at the matched indices, same shape as
    ``f_out`` (:func:`gather_matched` with ``hw``).
    """
    return _one_minus_cos(f_out, f_ref_matched)


def spatial_energy(f_out: torch.Tensor, f_ctx: torch.Tensor) -> torch.Tensor:
    """Spatial Feature Guidance ``E_spatial = mean_p (1 - cos(F^o_p, F^c_p))`` (Semantix, Sec. 3)."""
    return _one_minus_cos(f_out, f_ctx)


def _self_similarity(f: torch.Tensor, max_side: int) -> torch.Tensor:
    """Cosine self-similarity ``S = F F^T`` of ``(..., C, h, w)`` after average-pooling to at most
    ``max_side x max_side`` locations: ``(B', L, L)`` with ``L <= max_side**2``."""
    *_, C, h, w = f.shape
    x = f.reshape(-1, C, h, w)
    size = (min(h, max_side), min(w, max_side))
    if size != (h, w):
        x = F.adaptive_avg_pool2d(x, size)
    x = F.normalize(x.flatten(-2), dim=-2, eps=_EPS)  # (B', C, L)
    return x.transpose(-1, -2) @ x


def semantic_distance_energy(f_out: torch.Tensor, f_ctx: torch.Tensor, max_side: int = 32) -> torch.Tensor:
    """Semantic Distance regularisation ``E_reg = mean_{p,q} |S^o_pq - S^c_pq|`` (Semantix, Sec. 3).

    ``S`` is the cosine self-similarity matrix of a block's features after average-pooling to at
    most ``max_side x max_side`` locations (``adaptive_avg_pool2d``; 64x64 -> 32x32 is exact 2x2
    averaging). Note: ``E_reg`` is invariant to per-location rescaling and to orthogonal maps of
    the feature space; it compares relations between regions, not the features themselves.
    """
    if f_out.shape != f_ctx.shape:
        raise ValueError(
            f"feature maps must have the same shape, got {tuple(f_out.shape)} and {tuple(f_ctx.shape)}"
        )
    return (_self_similarity(f_out, max_side) - _self_similarity(f_ctx, max_side)).abs().mean()


def clamp_grad(g: torch.Tensor, limit: float | None = 1.0) -> torch.Tensor:
    """Hard element-wise clamp of a guidance gradient to ``[-limit, limit]`` (Semantix: [-1, 1]).

    ``limit=None`` disables the clamp (the "without clamp" ablation).
    """
    return g if limit is None else g.clamp(-limit, limit)


@dataclass
class TermGradients:
    """Per-term guidance gradients ``g_k = clamp(d E_k / d x)`` and what the clamp did to them.

    ``total`` is ``sum_k g_k`` and ``per_term[k]`` the clamped ``g_k`` (both detached, shaped like
    ``x``). ``max_abs[k]`` (the largest raw ``|d E_k / d x|`` element) and ``clamped_fraction[k]``
    (the fraction of elements at or beyond the clamp) are per sample, ``(B,)`` for ``x`` of shape
    ``(B, ...)``, and stay on the device: reading them is the caller's (one sync, after the loop).
    """

    total: torch.Tensor
    per_term: dict[str, torch.Tensor]
    max_abs: dict[str, torch.Tensor]
    clamped_fraction: dict[str, torch.Tensor]


# Why batched backward passes are off in this process (None: not known to be slow). Set by the first
# batched backward that meets vmap's slow path or fails; from then on per-term gradients use separate
# passes, with one logged warning. Per process, as the graph is always the same UNet's.
_batched_unavailable: str | None = None
_VMAP_FALLBACK = re.compile(r"not yet implemented the batching rule for (\S+?)\.? ")


def clamped_energy_gradient(
    terms: Mapping[str, torch.Tensor], x: torch.Tensor, limit: float | None = 1.0, batched: bool = True,
    fallback: bool = True,
) -> TermGradients:
    """``g = sum_k clamp(d E_k / d x)``: per-term gradients, each clamped, then summed (Semantix step 3).

    ``terms``: the already weighted scalar energies ``gamma_k E_k`` (graphs reaching ``x``); a term
    that does not depend on ``x`` (e.g. weight 0) contributes zeros. The per-term clamp needs one
    vector-Jacobian product per term; ``batched`` computes them in ONE backward pass through the
    network (``torch.autograd.grad(..., is_grads_batched=True)``, i.e. vmap over the backward), equal
    to the separate passes (tested); ``batched=False`` runs one backward pass per term.

    ``is_grads_batched`` runs on torch's legacy vmap, which has no batching rule for the backward of
    convolution, group/layer norm, SiLU, GELU, upsampling or CPU attention: through a UNet each such
    op loops over the batch (measured: results/benchmarks/semantix-gradients-cpu.json). With
    ``fallback`` (default), the first batched pass that meets such a loop, or fails, logs ONE warning
    naming the ops and every later call in the process uses separate passes (the values are the same);
    ``fallback=False`` always runs the batched pass (benchmarks time it that way).
    """
    global _batched_unavailable
    live = [k for k, e in terms.items() if isinstance(e, torch.Tensor) and e.requires_grad]
    raw = dict.fromkeys(terms)
    stacked = None
    if len(live) > 1 and batched and (_batched_unavailable is None or not fallback):
        stacked, reason = _batched_vjp([terms[k] for k in live], x, keep_graph=fallback)
        if reason is not None and fallback and _batched_unavailable is None:
            _batched_unavailable = reason
            log.warning("per-term energy gradients: the batched backward pass (is_grads_batched) %s; using one "
                        "backward pass per term from now on in this process (same values)", reason)
    if stacked is not None:
        raw.update(zip(live, stacked.detach(), strict=True))
    else:
        for j, name in enumerate(live):
            (g,) = torch.autograd.grad(terms[name], x, retain_graph=j + 1 < len(live), allow_unused=True,
                                       materialize_grads=True)
            raw[name] = g.detach()
    zeros = torch.zeros_like(x)
    per_term = {k: zeros if g is None else clamp_grad(g, limit) for k, g in raw.items()}
    per_sample = (lambda v: v.flatten(1)) if x.ndim > 1 else (lambda v: v.flatten()[None])
    max_abs = {k: per_sample(zeros if g is None else g).abs().amax(dim=1) for k, g in raw.items()}
    clamped_fraction = {
        k: torch.zeros_like(max_abs[k]) if g is None or limit is None
        else (per_sample(g).abs() >= limit).float().mean(dim=1)
        for k, g in raw.items()
    }
    return TermGradients(sum(per_term.values(), zeros), per_term, max_abs, clamped_fraction)


def _batched_vjp(energies: list[torch.Tensor], x: torch.Tensor,
                 keep_graph: bool) -> tuple[torch.Tensor | None, str | None]:
    """``d energies[k] / d x`` for every k in one vmapped backward pass, stacked ``(K, *x.shape)``, and
    why it was slow or failed (None when it ran batched throughout). On failure the gradients are
    None; ``keep_graph`` keeps the graph so that separate passes can follow."""
    enabled = torch._C._debug_only_are_vmap_fallback_warnings_enabled()
    torch._C._debug_only_display_vmap_fallback_warnings(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (stacked,) = torch.autograd.grad(
                torch.stack(energies), x,
                grad_outputs=torch.eye(len(energies), device=x.device, dtype=energies[0].dtype),
                is_grads_batched=True, retain_graph=keep_graph, allow_unused=True, materialize_grads=True,
            )
    except RuntimeError as error:
        if not keep_graph:
            raise
        return None, f"failed ({str(error).splitlines()[0][:200]})"
    finally:
        torch._C._debug_only_display_vmap_fallback_warnings(enabled)
    slow = set()
    for w in caught:
        match = _VMAP_FALLBACK.search(str(w.message))
        if match:
            slow.add(match.group(1))
        else:  # anything else is the caller's to see
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if slow:
        return stacked, f"loops over the batch in vmap's fallback for {', '.join(sorted(slow))}"
    return stacked, None
