"""Backbones: SD1.5 (`load_sd15`) and the offline random-weight `tiny` (`build_tiny`).

Importing this package is cheap; diffusers and transformers are imported when a backbone is built.
"""

from semantix.backbones.base import Backbone
from semantix.backbones.sd15 import load_sd15, save_as_diffusers_folder
from semantix.backbones.tiny import build_tiny

__all__ = ["Backbone", "build_tiny", "load_sd15", "save_as_diffusers_folder"]
