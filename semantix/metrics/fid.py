"""Set-level metrics: FID and ArtFID of a run's outputs against the style references.

FID: Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium", NeurIPS 2017. The Fréchet distance between Gaussians fitted to
Inception-v3 pool features of two sets,
    ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)),
computed by torchmetrics' `FrechetInceptionDistance` (2048-d pool features by default). Lower is better.

The two sets (compares "outputs-references"): every output of the run, against the run's style
references, the usual "generated set vs style set" protocol. `references` decides how a reference
that recurs across samples counts: "distinct" (default) once, deduplicated by a content hash (sha256 of
the 8-bit image Inception sees) since the last `reset()`; "per_output" once per output, as StyleID's
evaluation does with its `sty_eval` folder (one copy of the style per stylised image: 800 = 40 styles x
20 contents) and as art-fid's FID_inf requires (equal counts). Outputs are never deduplicated.

Input convention: harness images, (3, H, W) float in [0, 1], converted by
`semantix.metrics.inputs.to_inception_uint8` to uint8 0..255 (rounded) and passed with
`normalize=False`: torchmetrics' `normalize=True` path truncates (`(x * 255).byte()`) instead of
rounding. The standard Inception resizes every image to 299 x 299 per `resize`: "antialiased"
(torchmetrics' default, antialiased bilinear), "torch-fidelity" (its TensorFlow-1 compatible bilinear:
features identical to torch-fidelity's, tested) or "pytorch-fid" (plain bilinear on [0, 1], then
2x - 1). The art Inception (`network: art`) takes [0, 1] images at their own size, or with the short
side resized to `short_side` (StyleID: 512).

Weights of the standard Inception (config key `weights`, for ArtFID `inception_weights`):

- `torch-fidelity` (default): torch-fidelity's port of the TensorFlow FID Inception,
  `weights-inception-2015-12-05-6726825d.pth`, used only if already on disk where
  torch-fidelity/torchmetrics download it (`torch.hub.load_state_dict_from_url`'s folder,
  `$TORCH_HOME/hub/checkpoints`); the metric never downloads it (a job fetches its missing files
  first, when allowed: `semantix.weights.ensure_job_weights`);
- a local path to that file.
  Either file is read by us as a state dict of tensors (`semantix.checkpoints.load_state_dict_file`:
  `torch.load(weights_only=True)`, or safetensors) and loaded into torchmetrics' network; it is never
  handed to torch-fidelity's loader, which unpickles with `weights_only=False` (a crafted file would
  run code): a file holding anything but tensors is refused with `UnsafeCheckpointError`;
- `random`: the SAME architecture (torchmetrics' `NoTrainInceptionV3`, i.e. torch-fidelity's
  `FeatureExtractorInceptionV3`) built without loading any checkpoint, with seeded He-normal
  (fan-in, ReLU) conv weights and BatchNorm at its identity initialisation, so that activations keep
  their scale through the network in eval mode (PyTorch's default init shrinks the pool features to
  ~1e-8). Numbers are meaningless; every code path is real.

`feature` picks the torchmetrics feature layer (64, 192, 768 or 2048). 2048 is FID; the smaller
layers exist for fast tests with random weights and give numbers comparable with nothing else.

Small-N bias: FID is biased upwards for small sets (Chong and Forsyth, "Effectively Unbiased FID and
Inception Score and Where to Find Them", CVPR 2020), so the number of outputs and of distinct
references is reported beside the value (`details()`, stored by the runner in summary.json); compare
FIDs only at equal N. Feature networks are shared process-wide (`shared_model`) and are not child
modules of the metric: build the metric on its `device` rather than moving it.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
import torchvision
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.utilities import dim_zero_cat

from semantix.checkpoints import load_state_dict_file
from semantix.metrics.base import Compares, SetMetric
from semantix.metrics.inputs import check_same_size, to_inception_uint8
from semantix.metrics.perceptual import LPIPSNetwork, shared_lpips
from semantix.metrics.weights import (
    TORCHVISION,
    is_random,
    metric_device,
    require_file,
    seeded,
    shared_model,
    torch_hub_checkpoint,
)
from semantix.types import Sample

TORCH_FIDELITY = "torch-fidelity"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
FEATURE_LAYERS = (64, 192, 768, 2048)

ART = "art"
ART_INCEPTION_FILE = "art_inception.pth"
ART_INCEPTION_REPO = "matthias-wright/art_inception"
# art-fid's checkpoint carries two classification heads and their auxiliary heads; only the trunk is used.
ART_HEADS = ("fc1.", "fc2.", "AuxLogits1.", "AuxLogits2.")
# The smallest input torchvision's Inception3 accepts (its stride-2 valid convolutions run out of pixels).
INCEPTION_MIN_SIZE = 75



# -- the standard Inception ------------------------------------------------------------------------
class _UnloadedInceptionV3(NoTrainInceptionV3):
    """torchmetrics' `NoTrainInceptionV3` that keeps its fresh initialisation.

    torch-fidelity's constructor always loads a checkpoint (downloading one when given no path); this
    class is given a checkpoint holding `None` and skips loading it, so no file is needed.
    """

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if state_dict is None:
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# How the standard Inception's input reaches 299 x 299 (config key `resize` of `fid` / `artfid`):
ANTIALIASED = "antialiased"        # torchmetrics' default: bilinear with antialiasing, then (x - 128) / 128
TF1 = "torch-fidelity"             # torch-fidelity's TensorFlow-1 compatible bilinear, then (x - 128) / 128
PYTORCH_FID = "pytorch-fid"        # pytorch-fid: x / 255, plain bilinear (align_corners=False), then 2 x - 1
RESIZE_MODES = (ANTIALIASED, TF1, PYTORCH_FID)
INCEPTION_SIZE = 299


class ProtocolInceptionV3(_UnloadedInceptionV3):
    """torchmetrics' Inception with the protocol's resize: `antialiased` and `torch-fidelity` are
    torchmetrics' own forward (`antialias=True` / `False`; the latter is torch-fidelity's feature
    extractor exactly); `pytorch-fid` resizes and normalises as pytorch-fid's `InceptionV3`
    (`resize_input=True, normalize_input=True`) and then runs the same layers."""

    def __init__(self, *args, resize: str = ANTIALIASED, **kwargs):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        super().__init__(*args, antialias=resize == ANTIALIASED, **kwargs)
        self.resize_mode = resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_mode != PYTORCH_FID:
            return super().forward(x)
        unit = x.float() / 255.0
        unit = torch.nn.functional.interpolate(unit, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                                               align_corners=False)
        return self.layers(2.0 * unit - 1.0)

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """The feature layer `features_list[0]` of a normalised 299 x 299 batch (the layers torch-fidelity
        and pytorch-fid share: stem, max-pools, Mixed_5b..7c, global average pool)."""
        wanted = self.features_list[0]
        pooled = lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1)  # noqa: E731
        x = self.MaxPool_1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        if wanted == "64":
            return pooled(x)
        x = self.MaxPool_2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        if wanted == "192":
            return pooled(x)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(self, name)(x)
        if wanted == "768":
            return pooled(x)
        for name in ("Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return torch.flatten(self.AvgPool(x), 1)


def _unloaded_inception(feature: int, resize: str = ANTIALIASED) -> ProtocolInceptionV3:
    """torchmetrics' Inception-v3 feature extractor, built without reading any file (its constructor
    is handed a checkpoint of `None`, made here, and skips loading it)."""
    empty = io.BytesIO()
    torch.save(None, empty)
    empty.seek(0)
    return ProtocolInceptionV3(name="inception-v3-compat", features_list=[str(feature)],
                               feature_extractor_weights_path=empty, resize=resize)


def random_inception(feature: int, resize: str = ANTIALIASED) -> torch.nn.Module:
    """The torchmetrics/torch-fidelity Inception-v3 with He-normal conv weights from the current RNG."""
    network = _unloaded_inception(feature, resize)
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return network


# pytorch-fid publishes the same checkpoint under its own name (the same sha256 prefix) into the same
# torch hub folder: either name finds it, whichever library downloaded it.
PYTORCH_FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
STANDARD_INCEPTION_FILES = {TORCH_FIDELITY: (INCEPTION_FILE, PYTORCH_FID_INCEPTION_FILE),
                            PYTORCH_FID: (PYTORCH_FID_INCEPTION_FILE, INCEPTION_FILE)}


def inception_file(weights: str, setting: str) -> Path:
    """The FID Inception checkpoint for `weights`: "torch-fidelity" or "pytorch-fid" (looked for under
    both libraries' file names in torch hub's checkpoints folder) or a path."""
    return require_file(
        setting, weights, [torch_hub_checkpoint(name) for name in STANDARD_INCEPTION_FILES.get(weights, ())],
        expected=f"torch-fidelity's FID Inception-v3 state dict {INCEPTION_FILE}",
        how_to_get=f"On a machine with network, `torch_fidelity.calculate_metrics(..., fid=True)` or torchmetrics' "
                   f"FrechetInceptionDistance() downloads it from {INCEPTION_URL} into "
                   f"{torch_hub_checkpoint(INCEPTION_FILE).parent}; copy it there or anywhere.",
    )


def standard_inception(source: str, feature: int, setting: str = "weights",
                       resize: str = ANTIALIASED) -> torch.nn.Module:
    """torchmetrics' Inception feature extractor: `source` is "random" or the checkpoint's path.

    The checkpoint is read here as tensors only (never unpickled by torch-fidelity) and loaded strictly.
    """
    if is_random(source):
        return seeded(lambda: random_inception(feature, resize))
    state = load_state_dict_file(source, setting)
    if checkpoint_kind(state, Path(source), setting) != "standard":
        raise ValueError(f"{setting}: {source} is art-fid's {ART_INCEPTION_FILE}; the standard FID needs "
                         f"torch-fidelity's {INCEPTION_FILE} (art-fid's checkpoint is for ArtFID: "
                         "metrics.artfid.inception_weights)")
    network = _unloaded_inception(feature, resize)
    network.load_state_dict(state)
    return network


# -- the art-trained Inception of art-fid ----------------------------------------------------------
class ArtInceptionFeatures(torch.nn.Module):
    """art-fid's feature extractor: torchvision's Inception3 trunk, 2048-d average-pool features.

    art-fid (Wright and Ommer; `pip install art-fid`, art_fid/inception.py) uses a copy of torchvision's
    `Inception3` with two classification heads (`fc1`, `fc2`, and `AuxLogits1/2`), `transform_input=False`,
    and takes `model(batch, return_features=True)`: the pooled 2048-d vector before the heads. Its
    images are `ToTensor()` of the files: [0, 1] floats at their own size, neither resized nor
    normalised. This module reproduces that from our uint8 input (x / 255), without resizing.

    `short_side` (None: art-fid's own-size input): StyleID's evaluation (`evaluation/eval_artfid.py`)
    reads each file through `Resize(512)` first, the short side to 512 with antialiased bilinear
    (PIL's on its files; torchvision's antialiased tensor resize here, rounded back to 8 bits as PIL
    returns them), the long side `int(512 * long / short)`. On 512 x 512 images both are the identity.
    """

    num_features = 2048

    def __init__(self, trunk: torchvision.models.Inception3, short_side: int | None = None):
        super().__init__()
        self.trunk = trunk.eval().requires_grad_(False)
        self.short_side = short_side

    def train(self, mode: bool = True) -> ArtInceptionFeatures:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.short_side is not None and min(images.shape[-2:]) != self.short_side:
            images = torchvision.transforms.functional.resize(images, self.short_side, antialias=True)
        if min(images.shape[-2:]) < INCEPTION_MIN_SIZE:
            raise ValueError(
                f"art Inception: images of {tuple(images.shape[-2:])} px; art-fid feeds images at their own "
                f"size and Inception-v3 needs at least {INCEPTION_MIN_SIZE} px a side"
            )
        return self.trunk(images.float() / 255.0)


def _art_trunk() -> torchvision.models.Inception3:
    trunk = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    trunk.fc = torch.nn.Identity()
    return trunk


def art_inception(state: dict[str, torch.Tensor], short_side: int | None = None) -> ArtInceptionFeatures:
    """`ArtInceptionFeatures` from art-fid's state dict (its heads dropped; the trunk loaded strictly)."""
    trunk = _art_trunk()
    trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith(ART_HEADS)})
    return ArtInceptionFeatures(trunk, short_side)


def random_art_inception(short_side: int | None = None) -> ArtInceptionFeatures:
    """art-fid's architecture with He-normal conv weights from the current RNG (activations O(1))."""
    trunk = _art_trunk()
    for module in trunk.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return ArtInceptionFeatures(trunk, short_side)


def art_inception_candidates() -> list[Path]:
    """Where art_inception.pth may already be: art-fid's own download folder, the Hugging Face cache
    (repo matthias-wright/art_inception), the torch hub checkpoints folder."""
    from huggingface_hub import try_to_load_from_cache

    candidates = [Path(tempfile.gettempdir()) / "art_fid" / ART_INCEPTION_FILE]
    cached = try_to_load_from_cache(ART_INCEPTION_REPO, ART_INCEPTION_FILE)
    if isinstance(cached, str):  # otherwise None (not cached) or a "known not to exist" marker
        candidates.append(Path(cached))
    return [*candidates, torch_hub_checkpoint(ART_INCEPTION_FILE)]


def checkpoint_kind(state: dict[str, torch.Tensor], path: Path, setting: str) -> str:
    """"standard" for torch-fidelity's Inception (an `fc` head of 1008 classes), "art" for art-fid's
    checkpoint (heads `fc1`/`fc2`); anything else is refused rather than mislabelled."""
    fc = state.get("fc.weight")
    if fc is not None and fc.shape[0] == 1008:
        return "standard"
    if "fc1.weight" in state:
        return ART
    raise ValueError(
        f"{setting}: {path} is neither torch-fidelity's FID Inception ({INCEPTION_FILE}, an `fc` head of "
        f"1008 classes) nor art-fid's {ART_INCEPTION_FILE} (heads `fc1`/`fc2`)"
    )


FEATURE_MEMO_SIZE = 50_000  # images; 2048 float32 features each is 8 KiB, so at most ~400 MiB


class SharedFeatures(torch.nn.Module):
    """What `FrechetInceptionDistance(feature=...)` calls: the process-wide feature network for `key`,
    built by `build` on first use, run on its device. It owns no parameters, so moving or saving the
    metric leaves the shared network alone."""

    def __init__(self, key: tuple, build: Callable[[], torch.nn.Module], num_features: int, device: str):
        super().__init__()
        self.key = key
        self.build = build
        self.num_features = num_features
        self.model_device = device
        self.network()  # built now, so that missing weights fail when the run starts

    def network(self) -> torch.nn.Module:
        return shared_model(self.key, lambda: self.build().to(self.model_device))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 batch; each image's features are memoised by its bytes, so the fixed
        references of a dataset go through Inception once per process, not once per run."""
        memo = shared_model(("inception-features", self.key), dict)
        digests = [hashlib.sha256(image.cpu().numpy().tobytes()).hexdigest() for image in images]
        missing = [i for i, d in enumerate(digests) if d not in memo]
        if missing:
            computed = self.network()(images[missing].to(self.model_device))
            if len(memo) + len(missing) > FEATURE_MEMO_SIZE:
                memo.clear()  # bounded: a cold restart of the memo is correct, only slower
            memo.update({digests[i]: f for i, f in zip(missing, computed, strict=True)})
        return torch.stack([memo[d] for d in digests])


# -- the metrics -----------------------------------------------------------------------------------
# The fewest outputs a FID is reported as comparable over (the runner's `comparable` flag): FID is biased
# upwards at small N (Chong and Forsyth 2020); below ~50 images its covariance is mostly rank deficiency.
# A protocol with a fixed N sets it (StyleID: 800).
MIN_N = 50
STANDARD = "standard"
NETWORKS = ("auto", STANDARD, ART)
DISTINCT = "distinct"
PER_OUTPUT = "per_output"
REFERENCE_MODES = (DISTINCT, PER_OUTPUT)


class FID(SetMetric):
    """Fréchet Inception Distance of the run's outputs vs its style references; lower is better.

    Options (the protocol knobs; `conf/metrics/styleid.yaml` sets StyleID's values):

    - `weights`: "torch-fidelity" | "art" (art-fid's `art_inception.pth`, see `ArtFID`) | a path to
      either checkpoint (told apart by its heads) | "random" (module docstring);
    - `network`: "auto" (from the checkpoint; "random" gives the standard one) | "standard" | "art":
      with "random", which architecture gets random weights; with a file, a check that it is that one;
    - `references`: "distinct" (each distinct reference image once) | "per_output" (every sample's
      references once per output, as a style folder with one copy per stylised image: StyleID's
      `sty_eval`, 800 = 40 styles x 20 contents, and art-fid's equal-count FID_inf);
    - `resize` (standard Inception only): "antialiased" (torchmetrics' default) | "torch-fidelity"
      (TF1-compatible, torch-fidelity's features exactly) | "pytorch-fid" (plain bilinear, 2x - 1);
    - `short_side` (art Inception only): None (art-fid: own size) | 512 (StyleID's `Resize(512)`);
    - `feature`: the standard Inception's layer (2048 = FID); `device`: where Inception runs;
    - `min_n`: the protocol's N (default 50; StyleID 800): below it the runner marks the value not
      comparable (`comparable: false` in summary.json, flagged in the leaderboard).

    `compute()` gives the value; `details()` gives it with the set sizes, the Inception and the knobs.
    """

    higher_is_better = False
    compares = Compares.REFERENCE_SET
    pretrained = (f"torch-fidelity FID Inception-v3 ({INCEPTION_FILE}), or art-fid's {ART_INCEPTION_FILE} "
               "when configured")
    # The constructor argument holding the Inception's weights, named in weights errors.
    weights_setting: ClassVar[str] = "weights"

    def __init__(self, weights: str = TORCH_FIDELITY, feature: int = 2048, device: str = "auto",
                 network: str = "auto", references: str = DISTINCT, resize: str = ANTIALIASED,
                 short_side: int | None = None, min_n: int = MIN_N, **kwargs):
        super().__init__(**kwargs)
        self.min_n = min_n
        if feature not in FEATURE_LAYERS:
            raise ValueError(f"feature must be one of {FEATURE_LAYERS}, got {feature}")
        for option, value, allowed in (("network", network, NETWORKS), ("references", references, REFERENCE_MODES),
                                       ("resize", resize, RESIZE_MODES)):
            if value not in allowed:
                raise ValueError(f"{option} must be one of {allowed}, "
                                 f"got {value!r}")
        self.model_device = metric_device(device)
        self.network_choice = network
        self.references_mode = references
        self.resize_mode = resize
        self.short_side = short_side
        self.inception_kind, key, build = self._inception(weights, feature)
        if self.inception_kind in (ART, "random-art"):
            feature = ArtInceptionFeatures.num_features
        features = SharedFeatures(key, build, feature, self.model_device)
        self.frechet = FrechetInceptionDistance(feature=features, normalize=False).to(self.model_device)
        self.reference_hashes: set[tuple] = set()

    def _standard(self, source: str, feature: int) -> tuple[str, tuple, Callable[[], torch.nn.Module]]:
        kind = "random" if is_random(source) else STANDARD
        setting, resize = self.weights_setting, self.resize_mode
        return kind, ("inception", source, feature, resize, self.model_device), lambda: standard_inception(
            source, feature, setting, resize)

    def _art(self, path: Path | None, feature: int) -> tuple[str, tuple, Callable[[], torch.nn.Module]]:
        if feature != ArtInceptionFeatures.num_features:
            raise ValueError(f"the art Inception gives 2048-d features only, got feature={feature}")
        setting, short_side = self.weights_setting, self.short_side
        if path is None:
            return "random-art", ("art_inception", "random", short_side, self.model_device), lambda: seeded(
                lambda: random_art_inception(short_side))
        return ART, ("art_inception", str(path), short_side, self.model_device), lambda: art_inception(
            load_state_dict_file(path, setting), short_side)

    def _inception(self, weights: str, feature: int) -> tuple[str, tuple, Callable[[], torch.nn.Module]]:
        """(kind, shared_model key, builder); kind: "standard" | "art" | "random" | "random-art"."""
        if is_random(weights):
            return self._art(None, feature) if self.network_choice == ART else self._standard(weights, feature)
        if weights in STANDARD_INCEPTION_FILES:
            if self.network_choice == ART:
                raise ValueError(f"{self.weights_setting}: {weights!r} is the standard Inception, but "
                                 "network: art was asked for (use weights: art)")
            return self._standard(str(inception_file(weights, self.weights_setting)), feature)
        path = require_file(
            self.weights_setting, weights, art_inception_candidates() if weights == ART else [],
            expected=f"art-fid's {ART_INCEPTION_FILE} (Hugging Face {ART_INCEPTION_REPO}) or torch-fidelity's "
                     f"{INCEPTION_FILE}",
            how_to_get=f"On a machine with network, `huggingface-cli download {ART_INCEPTION_REPO} "
                       f"{ART_INCEPTION_FILE}` fetches art-fid's checkpoint.",
        )
        # Read to tell the two layouts apart; the builder reads it again, so it is not kept in memory.
        kind = checkpoint_kind(load_state_dict_file(path, self.weights_setting), path, self.weights_setting)
        if self.network_choice not in ("auto", kind):
            raise ValueError(f"{self.weights_setting}: {path} holds the {kind} Inception, but network: "
                             f"{self.network_choice} was asked for")
        return self._standard(str(path), feature) if kind == STANDARD else self._art(path, feature)

    def update(self, output: torch.Tensor, sample: Sample) -> None:
        self.frechet.update(to_inception_uint8(output), real=False)
        for reference in sample.references:
            image = to_inception_uint8(reference)
            if self.references_mode == PER_OUTPUT:
                self.frechet.update(image, real=True)
                continue
            digest = (tuple(image.shape), hashlib.sha256(image.cpu().numpy().tobytes()).hexdigest())
            if digest not in self.reference_hashes:
                self.reference_hashes.add(digest)
                self.frechet.update(image, real=True)

    def set_sizes(self) -> dict[str, int]:
        return {"n_outputs": int(self.frechet.fake_features_num_samples),
                "n_references": int(self.frechet.real_features_num_samples)}

    def fid(self) -> torch.Tensor:
        sizes = self.set_sizes()
        if min(sizes.values()) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 outputs and 2 distinct references; got {sizes}"
            )
        return self.frechet.compute()

    def compute(self) -> torch.Tensor:
        return self.fid()

    def protocol(self) -> dict:
        """The knobs this value was computed with (stored in summary.json beside it)."""
        knobs = {"references": self.references_mode, "min_n": self.min_n}
        if self.inception_kind in (ART, "random-art"):
            knobs["short_side"] = self.short_side
        else:
            knobs["resize"] = self.resize_mode
        return knobs

    def details(self) -> dict:
        """{"fid", "n_outputs", "n_references", "inception", "feature", "references", "resize" | "short_side"}."""
        return {"fid": float(self.fid()), **self.set_sizes(), "inception": self.inception_kind,
                "feature": self.frechet.inception.num_features, **self.protocol()}

    def reset(self) -> None:
        super().reset()
        self.frechet.reset()
        self.reference_hashes.clear()


class ArtFID(FID):
    """ArtFID = (1 + mean LPIPS(output, content)) x (1 + FID(outputs, references)); lower is better.

    Wright and Ommer, "ArtFID: Quantitative Evaluation of Neural Style Transfer", GCPR 2022; the
    reference code is art-fid (github.com/matthias-wright/art-fid, `pip install art-fid`).

    - FID: as `FID` (same sets, knobs `network`, `references`, `resize`, `short_side`, uint8 input),
      with the Inception chosen by `inception_weights`:
        * "art": art-fid's art-trained Inception, `art_inception.pth` (Hugging Face repo
          matthias-wright/art_inception), found in art-fid's download folder (<tempdir>/art_fid), the
          Hugging Face cache or the torch hub checkpoints folder; not downloaded by the metric (a job
          fetches its missing files first: `semantix.weights`);
        * a path to a checkpoint: art-fid's `art_inception.pth` (recognised by its `fc1`/`fc2` heads),
          or torch-fidelity's FID Inception;
        * "torch-fidelity" (default): the standard Inception, as `FID`;
        * "random": seeded random weights, standard architecture or art-fid's with `network: art`.
      With the art Inception, images go in as art-fid feeds them: [0, 1], at their own size (at least
      75 px), no normalisation (`ArtInceptionFeatures`); with the standard one, resized to 299.
      `details()["inception"]` says which was used: "art" | "standard" | "random" | "random-art".
      This is plain FID at the run's N (reported). art-fid's default mode, ArtFID_inf, fits FID_N
      against 1/N for N from 5000 up to the set size and extrapolates to N = infinity; with fewer than
      5000 images every FID_N takes the whole set, so it degenerates to plain FID anyway.
    - LPIPS: the lpips package, v0.1, AlexNet (as art-fid's `image_metrics.LPIPS`), output vs content at
      their own size, inputs in [-1, 1] (`to_lpips_input`); the mean over outputs. `lpips_weights`:
      "torchvision" | a path to torchvision's AlexNet checkpoint | "random" (see `perceptual.build_lpips`).
    """

    compares = Compares.REFERENCE_SET_AND_CONTENT
    pretrained = (f"Inception: art-fid's {ART_INCEPTION_FILE} when configured, else torch-fidelity's {INCEPTION_FILE}; "
               "LPIPS: lpips v0.1 AlexNet (torchvision alexnet-owt-7be5be79.pth)")
    weights_setting = "inception_weights"

    def __init__(self, inception_weights: str = TORCH_FIDELITY, lpips_weights: str = TORCHVISION,
                 feature: int = 2048, device: str = "auto", **kwargs):
        super().__init__(weights=inception_weights, feature=feature, device=device, **kwargs)
        self.lpips_weights = lpips_weights
        self.add_state("lpips_values", default=[], dist_reduce_fx="cat")
        self.lpips_model()  # built now, so that missing weights fail when the run starts

    def lpips_model(self) -> LPIPSNetwork:
        """The same shared LPIPS network as the `lpips` metric (one model per weights and device)."""
        return shared_lpips("alex", self.lpips_weights, self.model_device, "lpips_weights")

    def update(self, output: torch.Tensor, sample: Sample) -> None:
        # Range checks happen in the LPIPS network and the Inception converter.
        check_same_size(output, sample.content, "ArtFID LPIPS")
        self.lpips_values.append(self.lpips_model()(output, sample.content).reshape(1).float())
        super().update(output, sample)

    def mean_lpips(self) -> torch.Tensor:
        return dim_zero_cat(self.lpips_values).mean()

    def compute(self) -> torch.Tensor:
        return (1.0 + self.mean_lpips()) * (1.0 + self.fid().cpu())

    def details(self) -> dict:
        """{"artfid", "fid", "lpips", "n_outputs", "n_references", "inception", "feature", "fid_estimator"}."""
        return {"artfid": float(self.compute()), **super().details(), "lpips": float(self.mean_lpips()),
                "fid_estimator": "plain FID at N (not art-fid's FID_inf)"}


class ImageNetFID(FID):
    """FID on the standard (ImageNet-trained, TF-FID) Inception, under its own name `fid_imagenet`, so
    that a protocol's `fid` (StyleID's: art Inception) never silently means this one. Same options as
    `FID`; `network` may only be "standard" (or "auto")."""

    def __init__(self, weights: str = TORCH_FIDELITY, network: str = STANDARD, **kwargs):
        if network not in ("auto", STANDARD):
            raise ValueError(f"fid_imagenet is the standard Inception's FID; network: {network!r} is not "
                             "(use `fid` with network: art)")
        super().__init__(weights=weights, network=STANDARD, **kwargs)
