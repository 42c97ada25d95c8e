"""DINO ViT-B/8 metrics: structure distance (vs content), appearance similarity and correspondence
colour error (vs reference).

Backbone: DINO ViT-B/8 (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
ICCV 2021) as a transformers `ViTModel` without pooler, one per (weights, device) per process, shared by
the three metrics. Weights (config key `weights`):

- `facebook/dino-vitb8` (default) or another hub id: used from the Hugging Face cache; downloaded only
  when not offline (HF_HUB_OFFLINE / SEMANTIX_OFFLINE unset);
- a local folder holding `config.json` and `model.safetensors` (`save_pretrained` layout);
- DINO's own checkpoint file, `dino_vitbase8_pretrain.pth` (facebookresearch/dino, read as tensors);
- `random`: the same architecture (ViT-B/8: 12 layers, 12 heads, width 768, MLP 3072) with seeded random
  weights (numbers meaningless).

Input convention: harness images, (3, H, W) float in [0, 1], converted by
`semantix.metrics.inputs.to_dino_input`: short side resized to `short_side` (224), long side capped at
`max_side` (480), both rounded to multiples of 8, ImageNet-normalised [0, 1] input (PIE-Bench feeds
0..255 to its structure distance: its numbers are not comparable with ours). Position embeddings are
interpolated for sizes other than 224 x 224 (`interpolate_pos_encoding=True`, as DINO's own code does).

Features, all from the LAST transformer block (one forward pass per image, captured by forward hooks):

- keys: the block's self-attention key projection, all heads concatenated (768-d), CLS token included;
- tokens: the block's output, before the model's final LayerNorm (the "block" features that Splice
  takes its CLS token from).

Metrics:

- `DINOStructureDistance` (Tumanyan, Bar-Tal, Bagon, Dekel, "Splicing ViT Features for Semantic
  Appearance Transfer", CVPR 2022; the structure distance of PIE-Bench, Ju et al., "PnP Inversion:
  Boosting Diffusion-based Editing with 3 Lines of Code", ICLR 2024): MSE between the keys' cosine
  self-similarity matrices of output and content;
- `DINOAppearanceSimilarity` (the appearance similarity of the evaluation of Alaluf et al.,
  "Cross-Image Attention for Zero-Shot Appearance Transfer", SIGGRAPH 2024, after Splice's appearance
  term): cosine of the CLS tokens x 100;
- `CorrespondenceColourError` (ours, docs/metrics.md): the mean CIE Lab colour difference between each
  output location and its DINO-nearest reference location.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from skimage import color
from transformers import ViTConfig, ViTModel

from semantix.checkpoints import load_state_dict_file, refusing_pickled_code
from semantix.metrics.base import Compares, SampleMetric
from semantix.metrics.inputs import check_same_size, to_dino_input, to_hwc_numpy
from semantix.metrics.weights import is_random, metric_device, seeded, shared_model
from semantix.runtime import hub_downloads_allowed
from semantix.types import WeightsNotFoundError

DINO_HUB_ID = "facebook/dino-vitb8"
# The architecture of facebook/dino-vitb8's config.json (transformers' ViTConfig defaults otherwise:
# qkv biases, LayerNorm eps 1e-12, no dropout).
DINO_VITB8 = {"patch_size": 8, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
              "intermediate_size": 3072, "image_size": 224}
# attn_cosine_sim of Splice's extractor clamps the product of norms at this value.
COSINE_EPS = 1e-8


# facebookresearch/dino's VisionTransformer names -> transformers' ViTModel names (the fused qkv
# projection is split in three by `from_dino_checkpoint`).
DINO_NAMES = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
              "patch_embed.proj": "embeddings.patch_embeddings.projection", "norm": "layernorm"}
DINO_BLOCK_NAMES = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
                    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def from_dino_checkpoint(state: dict[str, torch.Tensor], path: Path, setting: str) -> dict[str, torch.Tensor]:
    """DINO's own checkpoint (`dino_vitbase8_pretrain.pth`: the backbone's state dict) in ViTModel's names."""
    out = {}
    for key, value in state.items():
        if key in DINO_NAMES:
            out[DINO_NAMES[key]] = value
            continue
        name, _, kind = key.rpartition(".")
        if name in DINO_NAMES:
            out[f"{DINO_NAMES[name]}.{kind}"] = value
        elif name.startswith("blocks.") and name.split(".", 2)[2] == "attn.qkv":
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"layers.{name.split('.')[1]}.attention.{part}.{kind}"] = chunk
        elif name.startswith("blocks.") and name.split(".", 2)[2] in DINO_BLOCK_NAMES:
            out[f"layers.{name.split('.')[1]}.{DINO_BLOCK_NAMES[name.split('.', 2)[2]]}.{kind}"] = value
        else:
            raise ValueError(f"{setting}: {path} is not DINO's ViT checkpoint layout (unexpected tensor {key!r}; "
                             "expected dino_vitbase8_pretrain.pth, the backbone's state dict)")
    return out


def load_dino(weights: str, setting: str = "weights") -> ViTModel:
    """DINO ViT-B/8 (eval, frozen, on CPU) with `weights` (see the module docstring); `setting` is named
    in weights errors."""
    if is_random(weights):
        model = seeded(lambda: ViTModel(ViTConfig(**DINO_VITB8), add_pooling_layer=False))
    elif Path(weights).expanduser().is_file():  # DINO's original .pth
        path = Path(weights).expanduser()
        state = from_dino_checkpoint(load_state_dict_file(path, setting), path, setting)
        model = ViTModel(ViTConfig(**DINO_VITB8), add_pooling_layer=False)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{setting}: {path} does not fit DINO ViT-B/8 (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    else:
        try:
            with refusing_pickled_code(setting, weights):  # transformers reads with weights_only=True
                model = ViTModel.from_pretrained(weights, local_files_only=not hub_downloads_allowed(),
                                                 add_pooling_layer=False)
        except OSError as error:
            raise WeightsNotFoundError(
                f"{setting}: weights not found (value {weights!r}). Expected a folder with config.json "
                f"and model.safetensors of DINO ViT-B/8, or the hub id {DINO_HUB_ID!r} already in the Hugging "
                f"Face cache (downloads allowed: {hub_downloads_allowed()}). On a machine with network, "
                f"`huggingface-cli download {DINO_HUB_ID}` fills the cache, or "
                f"`ViTModel.from_pretrained('{DINO_HUB_ID}').save_pretrained(folder)` writes a folder. Then "
                f"set it to /path/to/folder, or to `random` for seeded random weights "
                f"(metrics=tiny: code paths only, numbers meaningless). Cause: {error}"
            ) from error
    return model.eval().requires_grad_(False)


@dataclass
class DINOFeatures:
    keys: torch.Tensor  # (T, D): last block's attention keys, heads concatenated, CLS first
    tokens: torch.Tensor  # (T, D): last block's output, CLS first, then patches in row-major order
    grid: tuple[int, int]  # patch rows and columns (T = 1 + rows * columns)


def dino_features(model: ViTModel, batch: torch.Tensor) -> DINOFeatures:
    """Keys and tokens of the last block for one ImageNet-normalised (1, 3, H, W) batch."""
    captured = {}
    block = model.layers[-1]
    hooks = [
        block.attention.k_proj.register_forward_hook(lambda module, args, out: captured.__setitem__("keys", out)),
        block.register_forward_hook(lambda module, args, out: captured.__setitem__("tokens", out)),
    ]
    try:
        model(pixel_values=batch, interpolate_pos_encoding=True)
    finally:
        for hook in hooks:
            hook.remove()
    patch = model.config.patch_size
    grid = (batch.shape[-2] // patch, batch.shape[-1] // patch)
    return DINOFeatures(captured["keys"][0], captured["tokens"][0], grid)


def cosine_self_similarity(x: torch.Tensor) -> torch.Tensor:
    """(T, D) -> (T, T) matrix of cosines between rows (Splice's attn_cosine_sim)."""
    norms = x.norm(dim=1, keepdim=True)
    return (x @ x.T) / (norms @ norms.T).clamp(min=COSINE_EPS)


class _DINOMetric(SampleMetric):
    """Shared model handling; subclasses implement `score`."""

    pretrained = DINO_HUB_ID

    def __init__(self, weights: str = DINO_HUB_ID, short_side: int = 224, max_side: int = 480,
                 device: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.weights_source = weights
        self.short_side = short_side
        self.max_side = max_side
        self.model_device = metric_device(device)
        # Built now, so that missing weights fail when the run starts, not at its first sample.
        self.model()

    def model(self) -> ViTModel:
        """The process-wide DINO for these weights and device (built on first use)."""
        return shared_model(
            ("dino-vitb8", self.weights_source, self.model_device),
            lambda: load_dino(self.weights_source).to(self.model_device),
        )

    def features(self, image: torch.Tensor) -> DINOFeatures:
        batch = to_dino_input(image, self.short_side, self.max_side).to(self.model_device)
        return dino_features(self.model(), batch)


class DINOStructureDistance(_DINOMetric):
    """Structure distance (Splice / PIE-Bench), output vs content, lower is better.

    For each image, K is the (T, 768) matrix of last-block keys (CLS and patch tokens, heads
    concatenated) and S = cos(K_i, K_j) its T x T cosine self-similarity matrix; the value is the MEAN
    of (S_output - S_content)^2 over the T^2 entries (PIE-Bench's MSE; Splice's loss, too). Output and
    content have the same size (`SampleMetric.update` refuses others, and `score` checks it for direct
    callers rather than resizing), so both get the same token grid. 0 for identical images.
    """

    higher_is_better = False
    compares = Compares.CONTENT

    @torch.no_grad()
    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_same_size(output, target, type(self).__name__)
        s_output = cosine_self_similarity(self.features(output).keys)
        s_content = cosine_self_similarity(self.features(target).keys)
        return ((s_output - s_content) ** 2).mean().to(self.device)


class DINOAppearanceSimilarity(_DINOMetric):
    """Appearance similarity, output vs reference(s), higher is better: 100 x the cosine between the
    CLS tokens of the last block's output (before the final LayerNorm, as Splice takes it); the mean
    over references when there are several. 100 for identical images."""

    higher_is_better = True
    compares = Compares.REFERENCES

    @torch.no_grad()
    def score(self, output: torch.Tensor, target: tuple[torch.Tensor, ...]) -> torch.Tensor:
        cls_output = self.features(output).tokens[0]
        cosines = [torch.cosine_similarity(cls_output, self.features(ref).tokens[0], dim=0) for ref in target]
        return (100.0 * torch.stack(cosines).mean()).to(self.device)


def lab_patch_means(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(rows * columns, 3) mean CIE Lab colour (scikit-image, D65) of each token's image region, in the
    tokens' row-major order: the Lab image at its own resolution, average-pooled to the token grid."""
    lab = torch.from_numpy(color.rgb2lab(to_hwc_numpy(image))).permute(2, 0, 1).float()
    return torch.nn.functional.adaptive_avg_pool2d(lab[None], grid)[0].flatten(1).T


class CorrespondenceColourError(_DINOMetric):
    """Correspondence colour error (ours), output vs reference(s), lower is better.

    Tests "each part takes its counterpart's colour" directly. Features: the DINO patch tokens of the
    last block (config `weights`), L2-normalised. For each output patch, its match is the reference
    patch of highest cosine similarity (with several references, among all their patches together;
    `chunk_size` output patches are matched per matrix product). Colours: each patch's mean CIE Lab
    colour (`lab_patch_means`). The value is the mean over output patches of the Euclidean Lab
    distance (deltaE 1976) between the output patch's colour and its match's colour; 0 for an image
    against itself.

    Limitation: the match uses the output's own features, so a colour change that DINO sees also moves
    the match (possibly to a reference patch of that colour), and the error then under-reports it.
    DINO's features are largely, not fully, colour-invariant; the metric measures colour agreement of
    semantic correspondences only as far as DINO's correspondences are colour-blind.
    """

    higher_is_better = False
    compares = Compares.REFERENCES

    def __init__(self, weights: str = DINO_HUB_ID, short_side: int = 224, max_side: int = 480,
                 chunk_size: int = 4096, device: str = "auto", **kwargs):
        super().__init__(weights=weights, short_side=short_side, max_side=max_side, device=device, **kwargs)
        self.chunk_size = chunk_size

    def _patches(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised patch tokens (P, D) and their mean Lab colours (P, 3), on the model's device."""
        found = self.features(image)
        tokens = torch.nn.functional.normalize(found.tokens[1:], dim=1)
        return tokens, lab_patch_means(image, found.grid).to(tokens.device)

    @torch.no_grad()
    def score(self, output: torch.Tensor, target: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out_tokens, out_lab = self._patches(output)
        refs = [self._patches(ref) for ref in target]
        ref_tokens = torch.cat([tokens for tokens, _ in refs])
        ref_lab = torch.cat([lab for _, lab in refs])
        matches = torch.cat([(chunk @ ref_tokens.T).argmax(dim=1) for chunk in out_tokens.split(self.chunk_size)])
        return (out_lab - ref_lab[matches]).norm(dim=1).mean().to(self.device)
