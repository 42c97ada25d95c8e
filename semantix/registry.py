"""Name -> "module:Class" registries, imported lazily (the lm-evaluation-harness pattern).

Configs reach plugins through these registries: a config's `_target_` is one of the `build_*`
functions below and its `name` key picks the plugin, so an unknown name fails with the list of
known ones instead of an import error, and importing `semantix` stays cheap (no torch model code
is imported until a plugin is built). Third-party plugins join with `METHODS.register(...)`. Every
plugin a registry builds is checked against the registry's base class(es): a metric that is neither a
`SampleMetric` nor a `SetMetric` fails when it is built, not when the runner first scores with it.
"""

from __future__ import annotations

import importlib
from typing import Any


class UnknownPluginError(KeyError):
    """An unknown plugin name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


class Registry:
    """`kind` names the plugins in messages; `entries` maps names to "module:attribute" targets (a class or
    a factory); every built plugin must be an instance of one of `bases` ("module:Class", imported lazily)."""

    def __init__(self, kind: str, entries: dict[str, str], bases: tuple[str, ...]):
        self.kind = kind
        self._entries = dict(entries)
        self.bases = bases

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
        return _import(target)

    def build(self, name: str, **kwargs: Any) -> Any:
        plugin = self.get(name)(**kwargs)
        bases = tuple(_import(base) for base in self.bases)
        if not isinstance(plugin, bases):
            raise TypeError(f"{self.kind} {name!r} ({self._entries[name]}) built a {type(plugin).__qualname__}, "
                            f"which is not a {' or '.join(self.bases)}")
        return plugin


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
    bases=("semantix.methods.base:Method",),
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
    bases=("semantix.metrics.base:SampleMetric", "semantix.metrics.base:SetMetric"),
)

BACKBONES = Registry(
    "backbone",
    {
        "tiny": "semantix.backbones.tiny:build_tiny",
        "tiny_random": "semantix.backbones.tiny:build_tiny_random",
        "sd15": "semantix.backbones.sd15:load_sd15",
        "sd15_random": "semantix.backbones.tiny:build_sd15_random",
        "tiny_video": "semantix.backbones.tiny:build_tiny_video",
        "animatediff": "semantix.backbones.animatediff:load_animatediff",
        "animatediff_random": "semantix.backbones.tiny:build_animatediff_random",
    },
    bases=("semantix.backbones.base:Backbone",),
)

DATASETS = Registry(
    "dataset",
    {
        "manifest": "semantix.data.dataset:ManifestDataset",
        "demo": "semantix.data.dataset:demo_dataset",
        "demo_video": "semantix.data.dataset:demo_video_dataset",
        "prepared": "semantix.data.dataset:prepared_dataset",
    },
    bases=("semantix.data.dataset:ManifestDataset",),
)


def build_method(name: str, **kwargs: Any) -> Any:
    return METHODS.build(name, **kwargs)


def build_metric(name: str, **kwargs: Any) -> Any:
    return METRICS.build(name, **kwargs)


def build_backbone(name: str, **kwargs: Any) -> Any:
    return BACKBONES.build(name, **kwargs)


def build_dataset(name: str, **kwargs: Any) -> Any:
    return DATASETS.build(name, **kwargs)


# The errors whose message begins with the metric's constructor argument at fault ("weights: ..."); the
# metric cannot know where its config sits, so `build_metric_at` prefixes that path.
_SETTING_ERRORS = ("semantix.types:WeightsNotFoundError", "semantix.checkpoints:UnsafeCheckpointError")


def build_metric_at(path: str, config: Any) -> Any:
    """The metric of `config` (a node with `_target_: semantix.registry.build_metric`), which sits at
    `path` in the job's config (e.g. "metrics.clip_style"). A weights error comes back with that path
    before the argument it names ("metrics.clip_style.weights: ..."), whatever key the preset used."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(config)
    except InstantiationException as error:
        cause: BaseException = error
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, tuple(_import(e) for e in _SETTING_ERRORS)):
            raise type(cause)(f"{path}.{cause}") from cause
        raise


def build_metrics(configs: Any, group: str = "metrics") -> dict[str, Any]:
    """Every metric of the job's `metrics` node (key -> config), by key, in the node's order."""
    return {key: build_metric_at(f"{group}.{key}", config) for key, config in configs.items()}
