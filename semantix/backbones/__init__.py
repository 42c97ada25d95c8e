"""Backbones: SD1.5 (`load_sd15`), AnimateDiff (`load_animatediff`) and the offline tiny ones:
`tiny` / `tiny_video` (`build_tiny`, `build_tiny_video`: trained VAE, random UNet) and `tiny_random`
(`build_tiny_random`: all weights random).

Importing this package is cheap; diffusers and transformers are imported when a backbone is built.
"""

from semantix.backbones.animatediff import load_animatediff
from semantix.backbones.base import Backbone
from semantix.backbones.sd15 import load_sd15, save_as_diffusers_folder
from semantix.backbones.tiny import build_tiny, build_tiny_random, build_tiny_video

__all__ = ["Backbone", "build_tiny", "build_tiny_random", "build_tiny_video", "load_animatediff", "load_sd15",
           "save_as_diffusers_folder"]
