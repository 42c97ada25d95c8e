"""Semantic correspondence by nearest neighbours of diffusion features with a positional prior.

Semantix (He et al., ICLR 2025) matches each context location ``p`` to a reference location ``m(p)``
by its decoder features, with "a 2D positional encoding incorporated into the features" and
weighted by ``lambda_pe`` (3.0). How the two combine is our reading (docs/method.md, "Correspondence"):

- ``pe_form="prior"`` (default): ``m(p) = argmax_q cos(F_p, F_q) + w <P_p, P_q>`` with
  ``w = lambda_pe * pe_prior_unit`` (0.01: 0.03 at the paper's 3.0). The position kernel is at most
  1 (at zero displacement), so position changes a match only where another candidate's feature
  cosine is within ``w`` of the best: it breaks ties (flat regions, repeated texture) and never
  overrules a clear semantic match. Computed as the inner product of ``[F/|F| ; sqrt(w) P]``.
- ``pe_form="concat"`` (the earlier reading): ``A = normalise([F/|F| ; lambda_pe P])``, i.e.
  ``(cos + lambda_pe^2 <P_p, P_q>) / (1 + lambda_pe^2)``: at 3.0 position outweighs the features
  9 to 1 and nearly every location matches its own coordinates.

Positional encoding ``P``: a fixed dimension ``D`` (``pe_dim``, default 64), independent of the
block's channel count ``C`` (``pe_dim=None`` gives ``D = C``), so every block, at every resolution,
has the same positional kernel. Layout: the first ``D/2`` channels encode ``y``, the last ``D/2``
encode ``x``; per axis ``n = D/4`` frequencies, ``sin`` block then ``cos`` block, on the normalised
grid ``u = i / (side - 1)`` in ``[0, 1]``; geometric frequencies ``omega_k = pi * max_frequency **
(k / (n - 1))`` from ``pi`` to ``16 pi``. ``P`` has unit L2 norm per location, so ``<P_p, P_q> =
mean_k [cos(omega_k dy) + cos(omega_k dx)] / 2`` is a shift-invariant kernel, 1 at zero
displacement and < 1 for any other displacement inside the image (the ``pi`` frequency alone
guarantees it): among equal candidates each location keeps its own position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

PE_FORMS = ("prior", "concat")

__all__ = [
    "PE_FORMS",
    "augment_with_pe",
    "cosine_correspondence",
    "flatten_locations",
    "match_displacement",
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
    pe_form: str = "prior",
    pe_prior_unit: float = 0.01,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Matching vectors of feature maps ``(..., C, h, w)`` -> ``(..., h*w, C+D)``, whose inner products
    are the correspondence score of ``pe_form`` (module docstring).

    ``prior``: ``[F/|F| ; sqrt(lambda_pe * pe_prior_unit) P]``, inner product ``cos + w <P, P'>``.
    ``concat``: ``normalise([F/|F| ; lambda_pe P])``. ``P = positional_encoding_2d(h, w, D)``,
    ``D = pe_dim`` (``None``: ``D = C``). With ``lambda_pe = 0`` both are the normalised features
    padded with zeros.
    """
    if pe_form not in PE_FORMS:
        raise ValueError(f"pe_form must be one of {PE_FORMS}, got {pe_form!r}")
    if lambda_pe < 0 or pe_prior_unit < 0:
        raise ValueError(f"lambda_pe and pe_prior_unit must be >= 0, got {lambda_pe} and {pe_prior_unit}")
    *lead, C, h, w = feats.shape
    D = C if pe_dim is None else pe_dim
    f = F.normalize(feats, dim=-3, eps=eps)
    pe = positional_encoding_2d(h, w, D, device=feats.device, dtype=feats.dtype, max_frequency=max_frequency)
    weight = math.sqrt(lambda_pe * pe_prior_unit) if pe_form == "prior" else lambda_pe
    a = flatten_locations(torch.cat([f, (weight * pe).expand(*lead, D, h, w)], dim=-3))
    return a if pe_form == "prior" else F.normalize(a, dim=-1, eps=eps)


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
    pe_form: str = "prior",
    pe_prior_unit: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantix correspondence ``m(p) = argmax_q score(p, q)`` (He et al. 2025; our reading, see
    :func:`augment_with_pe` for the score of each ``pe_form``).

    ``f_query (C, h, w)``; ``f_refs``: one ``(C, h_r, w_r)`` map or several (multi-reference: each
    gets its own PE on its own normalised grid, then all locations are concatenated, reference
    after reference, row-major). Returns ``indices (h*w,)`` into that concatenation and ``scores``.
    """
    refs = [f_refs] if isinstance(f_refs, torch.Tensor) else list(f_refs)

    def vectors(f):
        return augment_with_pe(f, lambda_pe, pe_dim, max_frequency, pe_form, pe_prior_unit)

    keys = torch.cat([vectors(r) for r in refs], dim=-2)
    return nearest_neighbours(vectors(f_query), keys, chunk_size)


def match_displacement(
    indices: torch.Tensor, query_hw: tuple[int, int], ref_hws: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """How far each query location's match lies from its own position, in query cells ``(h*w,)``.

    ``indices`` from :func:`match_features` (into the references' concatenated locations); a match
    in reference ``k`` of size ``ref_hws[k]`` is placed on the query grid by its normalised
    coordinates (the same ``[0, 1]`` grid the positional encoding uses). The distance is Chebyshev
    (``max(|dy|, |dx|)``), so ``<= 1`` means "one of the 3x3 cells around its own position".
    """
    h, w = query_hw
    device = indices.device
    # Every reference location's coordinates on the query grid, built on the device (no host copy,
    # so no synchronisation inside the sampling loop), then looked up by index.
    ry, rx = [], []
    for rh, rw in ref_hws:
        local = torch.arange(rh * rw, device=device)
        ry.append(torch.div(local, rw, rounding_mode="floor").float() * (max(h - 1, 0) / max(rh - 1, 1)))
        rx.append((local % rw).float() * (max(w - 1, 0) / max(rw - 1, 1)))
    ry, rx = torch.cat(ry)[indices], torch.cat(rx)[indices]
    qy = torch.arange(h, device=device).repeat_interleave(w).float()
    qx = torch.arange(w, device=device).repeat(h).float()
    return torch.maximum((ry - qy).abs(), (rx - qx).abs())


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
