"""Deterministic DDIM sampling and inversion (eta = 0).

Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, Eq. (12) with sigma = 0:
``x_{t'} = sqrt(abar_{t'}) x0_hat + sqrt(1 - abar_{t'}) eps``, ``x0_hat = (x_t - sqrt(1 - abar_t)
eps) / sqrt(abar_t)``. Inversion runs the same update from the clean latent towards noise,
evaluating the noise predictor at the *destination* timestep with the current latent (the usual
approximation eps(x_{t'}, t) ~ eps(x_t, t) of DDIM inversion, Dhariwal and Nichol 2021, App. F;
Mokady et al. 2023): it is approximate, and the reconstruction error depends on the model and the
number of steps.

Conventions follow :mod:`semantix.diffusion.ddpm`: the schedule is a diffusers ``DDIMScheduler``
after ``set_timesteps(N)``; index 0 is the noisiest timestep; sampling step ``i`` goes from
``timesteps[i]`` to ``timesteps[i] - 1000 // N`` (``final_alpha_cumprod`` below 0, exactly as
``DDIMScheduler.step`` with ``eta=0``). The inversion stores ``xts[i]``, the latent that enters
sampling step ``i`` (``xts[0] = x_T``), and ``features[i]``, whatever the noise predictor returned
beside eps when it was evaluated at ``timesteps[i]`` (e.g. attention q/k/v captured by a processor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .ddpm import EpsFn, split_eps_output

__all__ = ["DDIMInversion", "DDIMStepper", "ddim_invert", "ddim_sample"]


class DDIMStepper:
    """Per-step DDIM (eta = 0) coefficients of a ``DDIMScheduler`` after ``set_timesteps``."""

    def __init__(self, scheduler):
        if scheduler.num_inference_steps is None:
            raise ValueError("call scheduler.set_timesteps(N) first")
        self.timesteps = [int(t) for t in scheduler.timesteps]
        step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        ac = scheduler.alphas_cumprod
        final = float(scheduler.final_alpha_cumprod)
        self.abar = [float(ac[t]) for t in self.timesteps]
        self.abar_prev = [float(ac[t - step]) if t - step >= 0 else final for t in self.timesteps]

    def __len__(self) -> int:
        return len(self.timesteps)

    @staticmethod
    def _move(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
        x0_hat = (x - math.sqrt(1.0 - a_from) * eps) / math.sqrt(a_from)
        return math.sqrt(a_to) * x0_hat + math.sqrt(1.0 - a_to) * eps

    def step(self, x_t: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        """Sampling step ``i``: ``x_{timesteps[i]} -> x_{timesteps[i] - 1000/N}``."""
        return self._move(x_t, eps, self.abar[i], self.abar_prev[i])

    def inverse_step(self, x_prev: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        """Inverse of step ``i``: the latent before sampling step ``i`` from the one after it."""
        return self._move(x_prev, eps, self.abar_prev[i], self.abar[i])


@dataclass
class DDIMInversion:
    """``x0``: the clean latent; ``xts[i]``: latent entering sampling step ``i`` (``xts[0] = x_T``);
    ``timesteps``; ``features[i]``: what the predictor captured at ``timesteps[i]`` (or None)."""

    x0: torch.Tensor
    xts: list[torch.Tensor]
    timesteps: list[int]
    features: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.xts)

    @property
    def x_T(self) -> torch.Tensor:  # noqa: N802 - the paper's name
        return self.xts[0]

    def to(self, device=None) -> DDIMInversion:
        def mv(v):
            if isinstance(v, torch.Tensor):
                return v.to(device)
            if isinstance(v, dict):
                return {k: mv(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return type(v)(mv(x) for x in v)
            return v

        return DDIMInversion(mv(self.x0), mv(self.xts), list(self.timesteps), mv(self.features))

    def to_dict(self) -> dict[str, Any]:
        return {"format": "semantix.ddim_inversion/1", "x0": self.x0, "xts": torch.stack(self.xts),
                "timesteps": list(self.timesteps), "features": self.features}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DDIMInversion:
        if d.get("format") != "semantix.ddim_inversion/1":
            raise ValueError(f"not a DDIM inversion: format={d.get('format')!r}")
        xts = list(d["xts"].unbind(0))
        if len(xts) != len(d["timesteps"]) or (d["features"] is not None and len(d["features"]) != len(xts)):
            raise ValueError("DDIM inversion with inconsistent lengths")
        return cls(d["x0"], xts, [int(t) for t in d["timesteps"]], d["features"])


@torch.no_grad()
def ddim_invert(x0: torch.Tensor, eps_fn: EpsFn, scheduler) -> DDIMInversion:
    """DDIM inversion (eta = 0) of ``x0`` over the scheduler's N steps; see the module docstring.

    ``eps_fn(x, t)`` returns eps or ``(eps, features)``; ``features`` is stored per step.
    """
    stepper = DDIMStepper(scheduler)
    n = len(stepper)
    xts: list[torch.Tensor | None] = [None] * n
    features: list[Any] = [None] * n
    x = x0
    for i in reversed(range(n)):
        eps, feats = split_eps_output(eps_fn(x, stepper.timesteps[i]))
        x = stepper.inverse_step(x, eps, i)
        xts[i], features[i] = x, feats
    has_features = any(f is not None for f in features)
    return DDIMInversion(x0, xts, list(stepper.timesteps), features if has_features else None)


@torch.no_grad()
def ddim_sample(x_T: torch.Tensor, eps_fn: EpsFn, scheduler, start: int = 0) -> torch.Tensor:  # noqa: N803
    """Deterministic DDIM sampling from ``x_T`` (steps ``start .. N-1``); returns the clean latent."""
    stepper = DDIMStepper(scheduler)
    x = x_T
    for i in range(start, len(stepper)):
        eps, _ = split_eps_output(eps_fn(x, stepper.timesteps[i]))
        x = stepper.step(x, eps, i)
    return x
