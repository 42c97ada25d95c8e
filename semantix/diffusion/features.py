"""Capture intermediate UNet features with forward hooks.

Semantix (He et al., ICLR 2025) guides sampling with the outputs of the second and third decoder
blocks of the SD1.5 UNet (diffusers ``up_blocks.1`` and ``up_blocks.2``); the same mechanism serves
any method that needs block outputs (DragonDiffusion-style energy guidance, feature injection).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture_block_outputs"]


@contextmanager
def capture_block_outputs(module: nn.Module, block_paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of sub-modules of ``module`` while the context is open.

    ``block_paths`` are dotted paths resolved with ``module.get_submodule`` (``"up_blocks.1"``).
    Yields a dict that every forward pass fills: ``captured[path]`` is the block's output hidden
    states of the latest call (for a tuple output, its element 0). The tensors are NOT detached:
    with grad enabled they carry the autograd graph back to the UNet input, which energy guidance
    needs. The hooks are removed when the context exits, also on an exception.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for path in block_paths:
            sub = module.get_submodule(path)

            def hook(_mod, _inputs, output, _path=path):
                captured[_path] = output[0] if isinstance(output, tuple | list) else output

            handles.append(sub.register_forward_hook(hook))
        yield captured
    finally:
        for h in handles:
            h.remove()
