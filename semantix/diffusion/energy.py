"""The Semantix energy terms (He et al., "Semantix: An Energy-guided Sampler for Semantic Style
Transfer", ICLR 2025, Sec. 3 as read in docs/method.md / spec section 3) and guidance helpers.

All terms take channel-first feature maps ``(..., C, h, w)`` (``(C, h, w)``, ``(B, C, h, w)``, or
``(B, F, C, h, w)``); features are L2-normalised per location (cosine similarity over the channel
axis), and the mean runs over every location and every leading index. They are differentiable in
``f_out``; the other argument is treated as given (pass it detached).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = [
    "clamp_grad",
    "clamped_energy_gradient",
    "gather_matched",
    "semantic_distance_energy",
    "spatial_energy",
    "style_energy",
]

_EPS = 1e-8


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


def clamped_energy_gradient(
    terms: Mapping[str, torch.Tensor], x: torch.Tensor, limit: float | None = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``g = sum_k clamp(d E_k / d x)``: per-term gradients, each clamped, then summed (spec Sec. 2, step 3).

    ``terms``: the already weighted scalar energies ``gamma_k E_k`` (graphs reaching ``x``).
    Returns the detached total and the detached clamped per-term gradients (a term that does not
    depend on ``x`` contributes zeros). Frees the graph after the last term.
    """
    names = list(terms)
    grads: dict[str, torch.Tensor] = {}
    for j, name in enumerate(names):
        e = terms[name]
        if not (isinstance(e, torch.Tensor) and e.requires_grad):  # e.g. a term with weight 0
            grads[name] = torch.zeros_like(x)
            continue
        (g,) = torch.autograd.grad(e, x, retain_graph=j + 1 < len(names), allow_unused=True)
        grads[name] = torch.zeros_like(x) if g is None else clamp_grad(g.detach(), limit)
    total = sum(grads.values(), torch.zeros_like(x))
    return total, grads
