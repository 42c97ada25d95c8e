"""Name -> "module:Class" registries, imported lazily (the lm-evaluation-harness pattern).

Configs reach plugins through these registries: a config's `_target_` is one of the `build_*`
functions below and its `name` key picks the plugin, so an unknown name fails with the list of
known ones instead of an import error, and importing `semantix` stays cheap (no torch model code
is imported until a plugin is built). Third-party plugins join with `METHODS.register(...)`.
"""

from __future__ import annotations

import importlib
from typing import Any


class UnknownPluginError(KeyError):
    """An unknown plugin name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def register(self, name: str, target: str) -> None:
        """Add a plugin: `target` is "package.module:attribute"."""
        if ":" not in target:
            raise ValueError(f"{self.kind} target must look like 'package.module:Class', got {target!r}")
        self._entries[name] = target

    def get(self, name: str) -> Any:
        try:
            target = self._entries[name]
        except KeyError:
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            ) from None
        module_name, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)


METHODS = Registry(
    "method",
    {
        "identity": "semantix.methods.classical:Identity",
        "reinhard": "semantix.methods.classical:ReinhardColorTransfer",
        "semantix": "semantix.methods.semantix:Semantix",
        "styleid": "semantix.methods.styleid:StyleID",
        "stylegallery": "semantix.methods.stylegallery:StyleGallery",
        "eye_for_an_eye": "semantix.methods.eye_for_an_eye:EyeForAnEye",
        "cross_image_attention": "semantix.methods.cross_image_attention:CrossImageAttention",
        "histogram_matching": "semantix.methods.classical:HistogramMatching",
        "frame_by_frame": "semantix.methods.frame_by_frame:FrameByFrame",
    },
)

METRICS = Registry(
    "metric",
    {
        "ssim_grey": "semantix.metrics.structure:GreySSIM",
        "colour_histogram": "semantix.metrics.colour:ColourHistogramDistance",
        "clip_style": "semantix.metrics.clip:CLIPStyleSimilarity",
        "clip_content": "semantix.metrics.clip:CLIPContentSimilarity",
        "clip_text": "semantix.metrics.clip:CLIPTextScore",
        "lpips": "semantix.metrics.perceptual:LPIPSDistance",
        "cfsd": "semantix.metrics.vgg:CFSD",
        "gram": "semantix.metrics.vgg:GramDistance",
        "structure_dino": "semantix.metrics.dino:DINOStructureDistance",
        "dino_appearance": "semantix.metrics.dino:DINOAppearanceSimilarity",
        "correspondence_colour": "semantix.metrics.dino:CorrespondenceColourError",
        "fid": "semantix.metrics.fid:FID",
        "artfid": "semantix.metrics.fid:ArtFID",
        "fid_imagenet": "semantix.metrics.fid:ImageNetFID",
        "clip_frame_consistency": "semantix.metrics.temporal:CLIPFrameConsistency",
        "warping_error": "semantix.metrics.temporal:WarpingError",
    },
)

BACKBONES = Registry(
    "backbone",
    {
        "tiny": "semantix.backbones.tiny:build_tiny",
        "sd15": "semantix.backbones.sd15:load_sd15",
        "sd15_random": "semantix.backbones.tiny:build_sd15_random",
        "tiny_video": "semantix.backbones.tiny:build_tiny_video",
        "animatediff": "semantix.backbones.animatediff:load_animatediff",
        "animatediff_random": "semantix.backbones.tiny:build_animatediff_random",
    },
)

DATASETS = Registry(
    "dataset",
    {
        "manifest": "semantix.data.dataset:ManifestDataset",
        "demo": "semantix.data.dataset:demo_dataset",
        "demo_video": "semantix.data.dataset:demo_video_dataset",
        "prepared": "semantix.data.dataset:prepared_dataset",
    },
)


def build_method(name: str, **kwargs: Any) -> Any:
    return METHODS.build(name, **kwargs)


def build_metric(name: str, **kwargs: Any) -> Any:
    return METRICS.build(name, **kwargs)


def build_backbone(name: str, **kwargs: Any) -> Any:
    return BACKBONES.build(name, **kwargs)


def build_dataset(name: str, **kwargs: Any) -> Any:
    return DATASETS.build(name, **kwargs)
