"""Semantic correspondence by nearest neighbours of (position-augmented) diffusion features.

Semantix (He et al., ICLR 2025) matches each context location ``p`` to the reference location
``m(p) = argmax_q <A^c_p, A^r_q>`` with augmented features ``A = normalise([F/|F| ; lambda_pe P])``
and ``P`` a 2D sinusoidal positional encoding (our reading of the paper; see docs/method.md).

Positional encoding, the choice made here
-----------------------------------------
``P`` has a fixed dimension ``D`` (``pe_dim``, default 64), independent of the block's channel
count ``C`` (``pe_dim=None`` gives ``D = C``). Reason: with the normalised grid coordinates below,
a fixed ``D`` and fixed frequencies give every block, at every resolution, the same positional
kernel, so one ``lambda_pe`` means the same thing for all blocks; it also keeps the matching
matmul small (``C + 64`` instead of ``2C``).

Layout: the first ``D/2`` channels encode ``y``, the last ``D/2`` encode ``x``; per axis ``n = D/4``
frequencies, ``sin`` block then ``cos`` block. Coordinates are the normalised grid
``u = i / (side - 1)`` in ``[0, 1]`` (``0`` for a side of 1). Frequencies are geometric,
``omega_k = pi * max_frequency ** (k / (n - 1))``, ``k = 0..n-1``, i.e. from ``pi`` (half a period
across the image) to ``pi * max_frequency`` (default 16: a period of 1/8 of the image). ``P`` is
scaled to unit L2 norm per location, so ``lambda_pe`` is the ratio of the positional part's norm to
the (unit) feature part's norm, and ``<P_p, P_q> = mean_k [cos(omega_k dy) + cos(omega_k dx)] / 2``
is a shift-invariant kernel in the displacement, 1 at zero and < 1 for any other displacement
inside the image (the ``pi`` frequency alone guarantees it), so with identical features
everywhere each location matches itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "augment_with_pe",
    "cosine_correspondence",
    "flatten_locations",
    "match_features",
    "nearest_neighbours",
    "positional_encoding_2d",
]


def positional_encoding_2d(
    h: int,
    w: int,
    dim: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    max_frequency: float = 16.0,
) -> torch.Tensor:
    """2D sinusoidal positional encoding ``(dim, h, w)`` of the normalised ``(y, x)`` grid.

    Transformer-style sin/cos encoding (Vaswani et al. 2017, Sec. 3.5) applied per axis to
    coordinates in ``[0, 1]``, ``dim/2`` channels for ``y`` then ``dim/2`` for ``x``; geometric
    frequencies from ``pi`` to ``pi * max_frequency``; unit L2 norm per location (module docstring).
    ``dim`` must be a positive multiple of 4.
    """
    if dim <= 0 or dim % 4:
        raise ValueError(f"positional encoding dim must be a positive multiple of 4, got {dim}")
    n = dim // 4
    k = torch.arange(n, device=device, dtype=torch.float64)
    omega = math.pi * (max_frequency ** (k / (n - 1)) if n > 1 else torch.ones_like(k))

    def axis(side: int) -> torch.Tensor:  # (2n, side)
        u = torch.arange(side, device=device, dtype=torch.float64) / max(side - 1, 1)
        ang = omega[:, None] * u[None, :]
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=0)

    py = axis(h)[:, :, None].expand(2 * n, h, w)
    px = axis(w)[:, None, :].expand(2 * n, h, w)
    pe = torch.cat([py, px], dim=0) / math.sqrt(dim / 2)
    return pe.to(dtype)


def flatten_locations(f: torch.Tensor) -> torch.Tensor:
    """``(..., C, h, w)`` -> ``(..., h*w, C)`` (row-major locations)."""
    return f.flatten(-2).transpose(-1, -2)


def augment_with_pe(
    feats: torch.Tensor,
    lambda_pe: float,
    pe_dim: int | None = 64,
    max_frequency: float = 16.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """``normalise([F/|F| ; lambda_pe P])`` per location, flattened: ``(..., C, h, w)`` -> ``(..., h*w, C+D)``.

    ``P = positional_encoding_2d(h, w, D)`` with ``D = pe_dim`` (``None``: ``D = C``), unit norm per
    location. With ``lambda_pe = 0`` the result is the normalised features padded with zeros.
    """
    *lead, C, h, w = feats.shape
    D = C if pe_dim is None else pe_dim
    f = F.normalize(feats, dim=-3, eps=eps)
    pe = positional_encoding_2d(h, w, D, device=feats.device, dtype=feats.dtype, max_frequency=max_frequency)
    pe = (lambda_pe * pe).expand(*lead, D, h, w)
    a = torch.cat([f, pe], dim=-3)
    return F.normalize(flatten_locations(a), dim=-1, eps=eps)


@torch.no_grad()
def nearest_neighbours(
    query: torch.Tensor, keys: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the key of highest inner product (cosine for L2-normalised inputs).

    ``query (..., N, D)``, ``keys (..., M, D)`` (leading dims broadcast) -> ``indices (..., N)``
    int64 and ``scores (..., N)``. Computed as one matmul per chunk of ``chunk_size`` queries, so
    the memory peak is ``chunk_size * M`` similarities (a 4096 x 4096 match never materialises the
    full matrix). Ties resolve as ``torch.max`` does.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    N = query.shape[-2]
    kt = keys.transpose(-1, -2)
    idx_chunks, score_chunks = [], []
    for s in range(0, N, chunk_size):
        sim = query[..., s : s + chunk_size, :] @ kt
        sc, ix = sim.max(dim=-1)
        idx_chunks.append(ix)
        score_chunks.append(sc)
    return torch.cat(idx_chunks, dim=-1), torch.cat(score_chunks, dim=-1)


@torch.no_grad()
def match_features(
    f_query: torch.Tensor,
    f_refs: torch.Tensor | Sequence[torch.Tensor],
    lambda_pe: float,
    pe_dim: int | None = 64,
    chunk_size: int = 1024,
    max_frequency: float = 16.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantix correspondence ``m(p) = argmax_q <A^query_p, A^ref_q>`` (He et al. 2025; our reading).

    ``f_query (C, h, w)``; ``f_refs``: one ``(C, h_r, w_r)`` map or several (multi-reference: each
    gets its own PE on its own normalised grid, then all locations are concatenated, reference
    after reference, row-major). Returns ``indices (h*w,)`` into that concatenation and ``scores``.
    """
    refs = [f_refs] if isinstance(f_refs, torch.Tensor) else list(f_refs)
    q = augment_with_pe(f_query, lambda_pe, pe_dim, max_frequency)
    keys = torch.cat([augment_with_pe(r, lambda_pe, pe_dim, max_frequency) for r in refs], dim=-2)
    return nearest_neighbours(q, keys, chunk_size)


@torch.no_grad()
def cosine_correspondence(
    query: torch.Tensor,
    keys: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """For each query location, the key location of highest cosine similarity (Eye-for-an-eye, Go et al. 2024).

    ``query (N, C)``, ``keys (M, C)``; optional boolean masks ``(N,)``/``(M,)``: only keys inside
    ``key_mask`` can be matched, and queries outside ``query_mask`` get ``-1`` (left unmatched).
    Returns ``(N,)`` int64 indices into ``keys``. The authors loop over query pixels in Python;
    this is one chunked matmul + argmax (:func:`nearest_neighbours`), tested against such a loop.
    """
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    candidates = None
    if key_mask is not None:
        candidates = key_mask.nonzero().squeeze(1)
        if candidates.numel() == 0:
            raise ValueError("cosine_correspondence: the key mask selects no location")
        k = k[candidates]
    indices, _ = nearest_neighbours(q, k, chunk_size)
    if candidates is not None:
        indices = candidates[indices]
    if query_mask is not None:
        indices = torch.where(query_mask, indices, torch.full_like(indices, -1))
    return indices
