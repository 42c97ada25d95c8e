"""DDPM stepping, edit-friendly DDPM inversion and its replay.

References
----------
- Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (DDPM): the
  posterior q(x_{t-1} | x_t, x_0) with mean Eq. (7) and the x0-from-eps predictor Eq. (15).
- Huberman-Spiegelglas, Kulikov, Michaeli, "An Edit Friendly DDPM Noise Space: Inversion and
  Manipulations", CVPR 2024: Sec. 3 / Algorithm 1 ("edit-friendly DDPM inversion"): sample
  independent x_t ~ q(x_t | x_0) for every timestep, then extract the noise maps
  z_t = (x_{t-1} - mu_t(x_t)) / sigma_t (their Alg. 1) so that the reverse DDPM process with
  those z_t reproduces x_0.

Conventions
-----------
The schedule is a diffusers ``DDPMScheduler`` after ``set_timesteps(T)``; its ``timesteps`` run
from the noisiest (index 0) to the least noisy (index T-1). Step ``i`` goes from timestep
``timesteps[i]`` to ``timesteps[i+1]`` (``-1`` after the last one, i.e. to ``x_0``). Everything
here is a reverse step with eta = 1: the posterior variance ``sigma_t^2 = beta_tilde_t`` of the
T-step chain (DDPM Eq. (7); diffusers ``variance_type="fixed_small"``).

The final step (``t_prev = -1``): ``DDPMScheduler`` uses ``alpha_bar_prev = 1`` there, which
makes ``sigma = 0`` and the edit-friendly noise map of that step undefined. We follow the
reference implementation of Huberman-Spiegelglas et al. and Stable Diffusion's scheduler config
(``set_alpha_to_one: false``): ``alpha_bar_prev = alphas_cumprod[0]`` at the last step, so
``sigma > 0`` at every step and the inversion is exact. ``final_alpha_cumprod=1.0`` reproduces
``DDPMScheduler.step`` exactly at the last step too (then ``invert`` refuses to run).

Latents may have any shape (``(B, 4, h, w)`` images, ``(B, F, 4, h, w)`` videos): nothing here
assumes 4D. The per-step functions take Python ints for timesteps and use Python-float
coefficients, so they never synchronise with the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

Tensor = torch.Tensor

# eps_fn(x_t, t) -> eps, or -> (eps, features_or_None)
EpsFn = Callable[[Tensor, int], Any]

__all__ = [
    "DDPMStepper",
    "EpsFn",
    "Inversion",
    "cfg",
    "ddpm_step",
    "invert",
    "posterior_mean",
    "posterior_sigma",
    "replay",
    "split_eps_output",
]


def cfg(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho and Salimans 2022, Eq. (6), with ``scale = 1 + w``): ``eps_u + scale (eps_c - eps_u)``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def split_eps_output(out: Any) -> tuple[Tensor, Any]:
    """Normalise an ``eps_fn`` return value to ``(eps, features_or_None)``."""
    if isinstance(out, tuple):
        if len(out) != 2:
            raise ValueError(f"eps_fn must return eps or (eps, features); got a tuple of {len(out)}")
        return out[0], out[1]
    return out, None


def _default_final_alpha_cumprod(scheduler) -> float:
    """``alphas_cumprod[0]`` unless the scheduler's config says ``set_alpha_to_one: true``."""
    if bool(getattr(scheduler.config, "set_alpha_to_one", False)):
        return 1.0
    return float(scheduler.alphas_cumprod[0])


def _alpha_bar(scheduler, t: int, final_alpha_cumprod: float | None) -> float:
    if t >= 0:
        return float(scheduler.alphas_cumprod[t])
    return (
        _default_final_alpha_cumprod(scheduler) if final_alpha_cumprod is None else float(final_alpha_cumprod)
    )


def _coefficients(abar_t: float, abar_prev: float) -> tuple[float, float, float, float, float]:
    """Scalars of one reverse DDPM step between two timesteps of the T-step schedule.

    DDPM (Ho et al. 2020) Eq. (7) with ``alpha_t = abar_t / abar_prev``, ``beta_t = 1 - alpha_t``:
    ``mu = c0 * x0_hat + ct * x_t`` with ``c0 = sqrt(abar_prev) beta_t / (1 - abar_t)``,
    ``ct = sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t)``, ``sigma^2 = beta_tilde_t =
    (1 - abar_prev) / (1 - abar_t) * beta_t``; Eq. (15): ``x0_hat = (x_t - sqrt(1 - abar_t) eps) /
    sqrt(abar_t)``. Returns ``(sqrt(abar_t), sqrt(1 - abar_t), c0, ct, sigma)``.
    """
    alpha_t = abar_t / abar_prev
    beta_t = 1.0 - alpha_t
    c0 = math.sqrt(abar_prev) * beta_t / (1.0 - abar_t)
    ct = math.sqrt(alpha_t) * (1.0 - abar_prev) / (1.0 - abar_t)
    var = (1.0 - abar_prev) / (1.0 - abar_t) * beta_t
    return math.sqrt(abar_t), math.sqrt(1.0 - abar_t), c0, ct, math.sqrt(max(var, 0.0))


def posterior_mean(
    x_t: Tensor, eps: Tensor, t: int, t_prev: int, scheduler, final_alpha_cumprod: float | None = None
) -> Tensor:
    """DDPM posterior mean ``mu_t(x_t, eps)`` (Ho et al. 2020, Eq. (7) with x0 from Eq. (15)).

    ``t``/``t_prev``: consecutive timesteps of the T-step schedule (``t_prev = -1`` for the last
    step). Agrees with ``DDPMScheduler.step`` when its added noise is zero.
    """
    s_a, s_1ma, c0, ct, _ = _coefficients(
        _alpha_bar(scheduler, int(t), final_alpha_cumprod),
        _alpha_bar(scheduler, int(t_prev), final_alpha_cumprod),
    )
    x0_hat = (x_t - s_1ma * eps) / s_a
    return c0 * x0_hat + ct * x_t


def posterior_sigma(t: int, t_prev: int, scheduler, final_alpha_cumprod: float | None = None) -> float:
    """DDPM posterior standard deviation ``sqrt(beta_tilde_t)`` (Ho et al. 2020, Eq. (7)), eta = 1."""
    return _coefficients(
        _alpha_bar(scheduler, int(t), final_alpha_cumprod),
        _alpha_bar(scheduler, int(t_prev), final_alpha_cumprod),
    )[4]


def ddpm_step(
    x_t: Tensor,
    eps: Tensor,
    t: int,
    t_prev: int,
    z: Tensor | None,
    scheduler,
    final_alpha_cumprod: float | None = None,
) -> Tensor:
    """One reverse DDPM step ``x_{t-1} = mu_t(x_t, eps) + sigma_t z`` (Ho et al. 2020, Alg. 2 line 4).

    ``z=None`` means zero noise. See :class:`DDPMStepper` for the precomputed per-step variant.
    """
    mu = posterior_mean(x_t, eps, t, t_prev, scheduler, final_alpha_cumprod)
    if z is None:
        return mu
    return mu + posterior_sigma(t, t_prev, scheduler, final_alpha_cumprod) * z


class DDPMStepper:
    """The T-step reverse DDPM chain of a scheduler, coefficients precomputed per step index.

    Same formulas as :func:`posterior_mean` / :func:`ddpm_step` (one implementation:
    :func:`_coefficients`), indexed by step ``i`` (``0`` = noisiest) so that the per-step loop
    touches only Python floats. ``timesteps`` overrides ``scheduler.timesteps`` (e.g. those stored
    in an :class:`Inversion`); the scheduler then only provides ``alphas_cumprod``.
    """

    def __init__(
        self,
        scheduler,
        timesteps: Sequence[int] | Tensor | None = None,
        final_alpha_cumprod: float | None = None,
    ) -> None:
        if timesteps is None:
            if getattr(scheduler, "num_inference_steps", None) is None:
                raise ValueError("call scheduler.set_timesteps(T) first, or pass timesteps")
            timesteps = scheduler.timesteps
        if isinstance(timesteps, Tensor):
            timesteps = timesteps.detach().cpu().tolist()
        self.timesteps: list[int] = [int(t) for t in timesteps]
        if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:], strict=False)):
            raise ValueError("timesteps must be strictly decreasing (noisiest first)")
        self.prev_timesteps: list[int] = self.timesteps[1:] + [-1]
        self.final_alpha_cumprod = (
            _default_final_alpha_cumprod(scheduler)
            if final_alpha_cumprod is None
            else float(final_alpha_cumprod)
        )
        abar = scheduler.alphas_cumprod.detach().double().cpu().tolist()
        self.alpha_bars = [abar[t] for t in self.timesteps]
        self.alpha_bars_prev = [abar[t] if t >= 0 else self.final_alpha_cumprod for t in self.prev_timesteps]
        self._coef = [_coefficients(a, p) for a, p in zip(self.alpha_bars, self.alpha_bars_prev, strict=True)]
        self._index = {t: i for i, t in enumerate(self.timesteps)}

    def __len__(self) -> int:
        return len(self.timesteps)

    def index(self, t: int) -> int:
        """Step index of timestep ``t``."""
        return self._index[int(t)]

    def sigma(self, i: int) -> float:
        """``sigma_t`` of step ``i``: sqrt of the DDPM posterior variance beta_tilde (eta = 1)."""
        return self._coef[i][4]

    def sqrt_one_minus_alpha_bar(self, i: int) -> float:
        """``sqrt(1 - abar_t)`` of step ``i`` (scale of classifier guidance on eps)."""
        return self._coef[i][1]

    def eps_coefficient(self, i: int) -> float:
        """How far a unit change of ``eps`` moves ``x_{t-1}`` at step ``i``: ``-d mu_t / d eps``,
        ``c0 sqrt(1 - abar_t) / sqrt(abar_t)``."""
        s_a, s_1ma, c0, _, _ = self._coef[i]
        return c0 * s_1ma / s_a

    def predict_x0(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDPM Eq. (15))."""
        s_a, s_1ma, *_ = self._coef[i]
        return (x_t - s_1ma * eps) / s_a

    def posterior_mean(self, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """``mu_t(x_t, eps)`` of step ``i`` (DDPM Eq. (7))."""
        _, _, c0, ct, _ = self._coef[i]
        return c0 * self.predict_x0(x_t, eps, i) + ct * x_t

    def step(self, x_t: Tensor, eps: Tensor, i: int, z: Tensor | None) -> Tensor:
        """``x_{t-1} = mu_t(x_t, eps) + sigma_t z`` for step ``i`` (``z=None``: zero noise)."""
        mu = self.posterior_mean(x_t, eps, i)
        return mu if z is None else mu + self.sigma(i) * z

    def noise_map(self, x_prev: Tensor, x_t: Tensor, eps: Tensor, i: int) -> Tensor:
        """Edit-friendly noise map ``z_t = (x_{t-1} - mu_t(x_t, eps)) / sigma_t`` (Huberman-Spiegelglas et al. 2024, Alg. 1)."""
        sigma = self.sigma(i)
        if sigma <= 0.0:
            raise ValueError(
                f"sigma = 0 at step {i} (t={self.timesteps[i]} -> {self.prev_timesteps[i]}): the noise map is "
                "undefined; use final_alpha_cumprod < 1 (the default, alphas_cumprod[0])"
            )
        return (x_prev - self.posterior_mean(x_t, eps, i)) / sigma

    def q_sample(self, x0: Tensor, noise: Tensor, i: int) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n`` (DDPM Eq. (4)) at step ``i``'s timestep."""
        s_a, s_1ma, *_ = self._coef[i]
        return s_a * x0 + s_1ma * noise


@dataclass
class Inversion:
    """Result of :func:`invert` (edit-friendly DDPM inversion).

    - ``timesteps``: ``(T,)`` int64, noisiest first (the scheduler's T-step schedule);
    - ``xts``: ``(T, *x0.shape)``, ``xts[i]`` = the latent at ``timesteps[i]``; ``xts[0] = x_T``;
    - ``zs``: ``(T, *x0.shape)``, ``zs[i]`` = noise map of step ``i`` (``timesteps[i]`` -> next);
    - ``x0``: the inverted latent;
    - ``features``: ``None`` or a list of length T: what ``eps_fn`` returned as features at step ``i``
      (e.g. ``{"up_blocks.1": tensor, ...}``), detached;
    - ``final_alpha_cumprod``: ``alpha_bar`` used after the last timestep (replay must use the same).
    """

    timesteps: Tensor
    xts: Tensor
    zs: Tensor
    x0: Tensor
    final_alpha_cumprod: float
    features: list[Any] | None = None

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def x_T(self) -> Tensor:  # noqa: N802 (paper notation)
        return self.xts[0]

    def to(self, device=None, dtype=None, move_features: bool = True) -> Inversion:
        """Copy on another device / floating dtype (timesteps stay int64).

        ``move_features=False`` leaves the features where they are (a sampler that copies one step's
        features at a time keeps all T steps off the GPU).
        """

        def mv(v):
            if isinstance(v, Tensor):
                return v.to(device=device, dtype=dtype if v.is_floating_point() else None)
            if isinstance(v, dict):
                return {k: mv(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return type(v)(mv(x) for x in v)
            return v

        return Inversion(
            timesteps=self.timesteps.to(device),
            xts=mv(self.xts),
            zs=mv(self.zs),
            x0=mv(self.x0),
            features=mv(self.features) if move_features else self.features,
            final_alpha_cumprod=self.final_alpha_cumprod,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of tensors / lists / floats, loadable with ``torch.load(weights_only=True)``."""
        return {
            "format": "semantix.inversion/1",
            "timesteps": self.timesteps,
            "xts": self.xts,
            "zs": self.zs,
            "x0": self.x0,
            "features": self.features,
            "final_alpha_cumprod": float(self.final_alpha_cumprod),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inversion:
        """Inverse of :meth:`to_dict`; validates shapes (a cache entry that fails raises ValueError)."""
        if d.get("format") != "semantix.inversion/1":
            raise ValueError(f"not a semantix inversion: format={d.get('format')!r}")
        inv = cls(
            timesteps=d["timesteps"],
            xts=d["xts"],
            zs=d["zs"],
            x0=d["x0"],
            features=d.get("features"),
            final_alpha_cumprod=float(d["final_alpha_cumprod"]),
        )
        T = len(inv)
        if inv.xts.shape != (T, *inv.x0.shape) or inv.zs.shape != inv.xts.shape:
            raise ValueError(
                f"inconsistent inversion: T={T}, xts {tuple(inv.xts.shape)}, zs {tuple(inv.zs.shape)}, "
                f"x0 {tuple(inv.x0.shape)}"
            )
        if inv.features is not None and len(inv.features) != T:
            raise ValueError(f"inconsistent inversion: {len(inv.features)} feature steps for T={T}")
        return inv


def _draw_noises(shape: tuple[int, ...], T: int, generator, device, dtype) -> Tensor:
    """``(T, *shape)`` standard normal noises. A list of generators gives one per batch item
    (dim 0 of ``shape``), so an item's inversion does not depend on the batch it is in."""
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        per = [randn_tensor((T, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator]
        return torch.stack(per, dim=1)
    return randn_tensor((T, *shape), generator=generator, device=device, dtype=dtype)


def invert(
    x0: Tensor,
    eps_fn: EpsFn,
    scheduler,
    num_steps: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    final_alpha_cumprod: float | None = None,
    features_device: torch.device | str | None = None,
) -> Inversion:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024, Sec. 3, Alg. 1).

    1. Draw independent ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n_t`` for every timestep of
       the T-step schedule (DDPM Eq. (4)); ``n_t`` from ``generator``.
    2. For t = T..1: ``eps_hat = eps_fn(x_t, t)``, ``z_t = (x_{t-1} - mu_t(x_t, eps_hat)) / sigma_t``
       (their Alg. 1), ``x_{t-1}`` the next stored latent (``x0`` after the last timestep).

    As in the authors' reference code, each stored ``x_{t-1}`` is then replaced by the value the
    reverse step recomputes, ``mu_t + sigma_t z_t`` (it differs from the sampled one only by
    rounding), so that :func:`replay` retraces the stored trajectory exactly.

    ``eps_fn(x_t, t)`` returns ``eps`` or ``(eps, features_or_None)`` (the caller wraps UNet, CFG and
    prompt in it; see :class:`semantix.diffusion.eps.UNetEpsFn`). It runs under ``torch.no_grad``.
    ``num_steps``: if given, ``scheduler.set_timesteps(num_steps, device=x0.device)`` is called
    first; otherwise the scheduler's current schedule is used. ``features_device``: move captured
    features there (e.g. ``"cpu"`` to keep GPU memory free); default: leave them where they are.
    """
    if num_steps is not None:
        scheduler.set_timesteps(num_steps, device=x0.device)
    stepper = DDPMStepper(scheduler, final_alpha_cumprod=final_alpha_cumprod)
    T = len(stepper)
    noises = _draw_noises(tuple(x0.shape), T, generator, x0.device, x0.dtype)
    xts = torch.stack([stepper.q_sample(x0, noises[i], i) for i in range(T)])
    zs = torch.empty_like(xts)
    features: list[Any] = []
    with torch.no_grad():
        for i, t in enumerate(stepper.timesteps):
            x_t = xts[i]
            eps, feats = split_eps_output(eps_fn(x_t, t))
            x_prev = xts[i + 1] if i + 1 < T else x0
            z = stepper.noise_map(x_prev, x_t, eps, i)
            zs[i] = z
            if i + 1 < T:
                xts[i + 1] = stepper.step(x_t, eps, i, z)
            if feats is not None and features_device is not None:
                feats = _to_device(feats, features_device)
            features.append(feats)
    has_features = any(f is not None for f in features)
    return Inversion(
        timesteps=torch.tensor(stepper.timesteps, dtype=torch.long),
        xts=xts,
        zs=zs,
        x0=x0.detach().clone(),
        features=features if has_features else None,
        final_alpha_cumprod=stepper.final_alpha_cumprod,
    )


def _to_device(v: Any, device) -> Any:
    if isinstance(v, Tensor):
        return v.to(device)
    if isinstance(v, dict):
        return {k: _to_device(x, device) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return type(v)(_to_device(x, device) for x in v)
    return v


def replay(inversion: Inversion, eps_fn: EpsFn, scheduler, start_step: int = 0) -> Tensor:
    """Reverse DDPM with the stored noise maps (Huberman-Spiegelglas et al. 2024: DDPM sampling with their z_t).

    From ``xts[start_step]``: ``x_{t-1} = mu_t(x_t, eps_fn(x_t, t)) + sigma_t z_t`` down to ``x_0``.
    With the ``eps_fn`` used for the inversion this returns ``inversion.x0`` (to float tolerance).
    The scheduler provides ``alphas_cumprod``; the timesteps and the final ``alpha_bar`` come from
    the inversion. Runs under ``torch.no_grad``; features returned by ``eps_fn`` are ignored.
    """
    stepper = DDPMStepper(
        scheduler, timesteps=inversion.timesteps, final_alpha_cumprod=inversion.final_alpha_cumprod
    )
    if not 0 <= start_step < len(stepper):
        raise ValueError(f"start_step {start_step} outside [0, {len(stepper)})")
    x = inversion.xts[start_step]
    with torch.no_grad():
        for i in range(start_step, len(stepper)):
            eps, _ = split_eps_output(eps_fn(x, stepper.timesteps[i]))
            x = stepper.step(x, eps, i, inversion.zs[i])
    return x
