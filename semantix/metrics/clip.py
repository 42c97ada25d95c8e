"""CLIP similarities: output vs reference(s) (style), output vs content, output vs prompt.

CLIP: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021, through open_clip (default ViT-L-14 with the `openai` weights; both set in the config).
Every value is 100 x the cosine of open_clip embeddings taken AFTER the projection into the joint
image-text space (`encode_image` / `encode_text`) and L2-normalised; pre-projection features give
other numbers.

- `CLIPStyleSimilarity`: output vs reference image; with several references, the mean over them.
  Content-leaky: CLIP embeds what is depicted as well as how, so an output that keeps its content
  also moves this score.
- `CLIPContentSimilarity`: output vs content image.
- `CLIPTextScore`: output vs the sample's prompt, 100 x max(cos, 0): the CLIPScore of Hessel et al.,
  "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", EMNLP 2021, scaled by 100 as
  torchmetrics' CLIPScore does (the paper scales by w = 2.5).

Input convention: the WHOLE image is resized (bicubic, antialiased) to the model's square input size
(224 x 224 for ViT-L-14) and normalised with the mean/std of the pretrained tag
(`inputs.to_clip_input`). There is no centre crop, unlike open_clip's preprocessing, because a crop
drops the borders, where style lives too; the aspect ratio is therefore not kept.

Weights (`weights` in the config): an open_clip pretrained tag, taken from the Hugging Face cache and
downloaded only when the network is allowed (`semantix.metrics.weights`); a local checkpoint path;
or `random`. For a tag, the activation its weights were trained with is forced: OpenAI's weights use
QuickGELU, which the plain `ViT-L-14` config does not, and open_clip would only warn about the
mismatch. For a local checkpoint, name the matching architecture (`ViT-L-14-quickgelu` for OpenAI's).
The three metrics share one model per (architecture, weights, device) and one bounded cache of
embeddings: references, contents and prompts repeat across samples, and all three metrics embed the
same output.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from semantix.checkpoints import refusing_pickled_code
from semantix.metrics.base import Compares, SampleMetric
from semantix.metrics.inputs import check_unit_range, to_clip_input
from semantix.metrics.weights import (
    LRUCache,
    is_random,
    metric_device,
    require_file,
    seeded,
    shared_model,
)
from semantix.runtime import hub_downloads_allowed
from semantix.types import WeightsNotFoundError

EMBEDDING_CACHE_SIZE = 256


def clip_score(image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
    """CLIPScore of two unit vectors: 100 x max(cos, 0)."""
    return 100.0 * torch.clamp(image_embedding @ text_embedding, min=0.0)


class CLIPEmbedder:
    """One open_clip model, its tokenizer, and an LRU cache of unit-norm post-projection embeddings.

    A plain object, not an nn.Module: assigned to a torchmetrics Metric, a module would become its
    child, so `metric.to(...)` would move the model shared with the other CLIP metrics and the
    metric's `state_dict()` would carry the CLIP weights.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, device: str):
        import open_clip

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        preprocess = open_clip.get_model_preprocess_cfg(model)
        size = preprocess["size"]
        height, width = (size, size) if isinstance(size, int) else size
        if height != width:
            raise ValueError(f"CLIP model input {height}x{width} is not square; to_clip_input resizes to squares")
        self.image_size = height
        self.mean, self.std = tuple(preprocess["mean"]), tuple(preprocess["std"])
        self._cache = LRUCache(EMBEDDING_CACHE_SIZE)

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """(D,) embedding, on the CPU, of a (3, H, W) image in [0, 1]."""
        image = check_unit_range(image, "CLIP image").cpu().contiguous()
        # Keyed by content, not by id(): ids are reused once a tensor is freed.
        digest = hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest()
        return self._cache.get_or_compute(("image", tuple(image.shape), digest), lambda: self._encode_image(image))

    def text(self, prompt: str) -> torch.Tensor:
        """(D,) embedding, on the CPU, of a prompt (truncated to the model's context length)."""
        return self._cache.get_or_compute(("text", prompt), lambda: self._encode_text(prompt))

    @torch.no_grad()
    def _encode_image(self, image: torch.Tensor) -> torch.Tensor:
        batch = to_clip_input(image, size=self.image_size, mean=self.mean, std=self.std).to(self.device)
        return self.model.encode_image(batch, normalize=True)[0].float().cpu()

    @torch.no_grad()
    def _encode_text(self, prompt: str) -> torch.Tensor:
        # open_clip's tokenizer truncates to the context length (77 for CLIP), keeping the end token.
        tokens = self.tokenizer([prompt]).to(self.device)
        return self.model.encode_text(tokens, normalize=True)[0].float().cpu()


def tag_hub_files(tag_cfg: dict) -> list[tuple[str, str]]:
    """(repo, file) pairs in the order open_clip's `download_pretrained` tries them (every
    pretrained tag of open_clip 3.3 names a Hugging Face file)."""
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives

    # "org/repo/" (trailing slash) names the repo's default weights file.
    repo_id, filename = os.path.split(tag_cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    return [(repo_id, name) for name in [*_get_safe_alternatives(filename), filename]]


def _tag_source(model: str, tag: str, tag_cfg: dict, setting: str) -> str:
    """What to pass open_clip as `pretrained`: the cached file (loading it by path makes no hub call
    at all), else the tag itself when downloads are allowed; offline and absent, a clear error."""
    from huggingface_hub import constants, try_to_load_from_cache

    files = tag_hub_files(tag_cfg)
    for repo_id, filename in files:
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):  # otherwise None (not cached) or a "known not to exist" marker
            return path
    if hub_downloads_allowed():
        return tag
    expected = " or ".join(f"{repo_id}/{filename}" for repo_id, filename in files)
    raise WeightsNotFoundError(
        f"{setting}: open_clip weights {model!r} / {tag!r} are not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and downloads are off (SEMANTIX_OFFLINE / HF_HUB_OFFLINE set, or the hub unreachable). "
        f"Expected the Hugging Face file {expected}. On a machine with network, "
        f"`python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{tag}')\"` fills that "
        "cache (copy it here or point HF_HOME at it). Or set it to /path/to/checkpoint, or to `random` for "
        "seeded random weights (metrics=tiny: code paths only, numbers meaningless)."
    )


def build_embedder(model: str, weights: str, device: str, setting: str = "weights") -> CLIPEmbedder:
    """The CLIP model of `weights` (a tag, a path or "random"); `setting` is named in weights errors."""
    import open_clip  # imported here: importing open_clip takes seconds

    if is_random(weights):
        clip = seeded(lambda: open_clip.create_model(model, pretrained=None, device=device))
    elif tag_cfg := open_clip.get_pretrained_cfg(model, weights):
        source = _tag_source(model, weights, tag_cfg, setting)
        with refusing_pickled_code(setting, source):  # open_clip reads with weights_only=True
            clip = open_clip.create_model(
                model, pretrained=source, device=device,
                force_quick_gelu=tag_cfg.get("quick_gelu", False), force_preprocess_cfg=tag_cfg,
            )
    else:
        path = require_file(
            setting, weights, [],
            expected=f"an open_clip {model} checkpoint (.pt, .bin or .safetensors) or one of its pretrained "
                     f"tags {open_clip.list_pretrained_tags_by_model(model)}",
            how_to_get="open_clip's pretrained tags download from the Hugging Face hub on a machine with network.",
        )
        if is_torchscript(path):  # OpenAI's own release files (ViT-L-14.pt): open_clip's loader for them
            # TorchScript is not a pickle: torch.jit.load builds TorchScript modules, no Python code runs;
            # open_clip keeps only the tensors and builds the model from their shapes.
            clip = open_clip.load_openai_model(str(path), precision="fp32", device=device)
        else:
            with refusing_pickled_code(setting, path):
                clip = open_clip.create_model(model, pretrained=str(path), device=device)
    return CLIPEmbedder(clip, open_clip.get_tokenizer(model), device)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (a zip holding `constants.pkl` and `code/`), as OpenAI's CLIP .pt files are."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


class _CLIPMetric(SampleMetric):
    """Shared constructor: the CLIP model (shared between the three metrics) and its embeddings."""

    higher_is_better = True
    pretrained = "open_clip ViT-L-14 openai (default; `model` and `weights` in the config)"

    def __init__(self, model: str = "ViT-L-14", weights: str = "openai", device: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.model_name = model
        self.weights_source = weights
        device = metric_device(device)
        self.embedder: CLIPEmbedder = shared_model(
            ("open_clip", model, weights, device), lambda: build_embedder(model, weights, device)
        )


class CLIPStyleSimilarity(_CLIPMetric):
    """100 x cos(CLIP(output), CLIP(reference)), averaged over the references."""

    compares = Compares.REFERENCES

    def score(self, output: torch.Tensor, target: tuple[torch.Tensor, ...]) -> torch.Tensor:
        embedding = self.embedder.image(output)
        return torch.stack([100.0 * (embedding @ self.embedder.image(ref)) for ref in target]).mean()


class CLIPContentSimilarity(_CLIPMetric):
    """100 x cos(CLIP(output), CLIP(content))."""

    compares = Compares.CONTENT

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 100.0 * (self.embedder.image(output) @ self.embedder.image(target))


class CLIPTextScore(_CLIPMetric):
    """CLIPScore of the output and the sample's prompt: 100 x max(cos, 0).

    The prompt goes through open_clip's tokenizer, which truncates it to the model's context length,
    77 tokens for CLIP including the start and end tokens: words past that do not count.
    """

    compares = Compares.PROMPT

    def score(self, output: torch.Tensor, target: str) -> torch.Tensor:
        return clip_score(self.embedder.image(output), self.embedder.text(target))
