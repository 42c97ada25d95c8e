"""Shared diffusion machinery: DDPM stepping and edit-friendly inversion, UNet noise predictors
with CFG, feature-capture hooks, feature matching with positional encoding, AdaIN, and the
Semantix energy terms. Used by the Semantix sampler and by the baselines.
"""

from .adain import adain, masked_adain, mean_std
from .ddpm import (
    DDPMStepper,
    EpsFn,
    Inversion,
    cfg,
    ddpm_step,
    invert,
    posterior_mean,
    posterior_sigma,
    replay,
    split_eps_output,
)
from .energy import (
    TermGradients,
    clamp_grad,
    clamped_energy_gradient,
    gather_matched,
    semantic_distance_energy,
    spatial_energy,
    style_energy,
)
from .eps import UNetEpsFn, frames_first
from .features import capture_block_outputs
from .matching import (
    augment_with_pe,
    cosine_correspondence,
    flatten_locations,
    match_displacement,
    match_features,
    nearest_neighbours,
    positional_encoding_2d,
)

__all__ = [
    "DDPMStepper",
    "EpsFn",
    "Inversion",
    "TermGradients",
    "UNetEpsFn",
    "adain",
    "augment_with_pe",
    "capture_block_outputs",
    "cfg",
    "clamp_grad",
    "clamped_energy_gradient",
    "cosine_correspondence",
    "ddpm_step",
    "flatten_locations",
    "frames_first",
    "gather_matched",
    "invert",
    "masked_adain",
    "match_displacement",
    "match_features",
    "mean_std",
    "nearest_neighbours",
    "positional_encoding_2d",
    "posterior_mean",
    "posterior_sigma",
    "replay",
    "semantic_distance_energy",
    "spatial_energy",
    "split_eps_output",
    "style_energy",
]
