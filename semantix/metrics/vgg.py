"""VGG19 metrics: CFSD (content structure, output vs content) and Gram distance (style, output vs reference).

Backbone: torchvision's VGG19 feature trunk (`torchvision.models.vgg19(weights=None).features`, eval,
frozen), one per (weights, device) per process, shared by both metrics. Weights (config key `weights`):

- `torchvision` (default): torchvision's IMAGENET1K_V1 checkpoint `vgg19-dcbb9e9d.pth`, used only if
  it is already in the torch hub cache (`$TORCH_HOME/hub/checkpoints`): not downloaded by the metric
  (a job fetches its missing files first: `semantix.weights`);
- a local path to a state dict of that layout (the full VGG19 state dict; only `features.*` is used);
- `random`: the same architecture with seeded random weights (numbers meaningless).

Input convention: harness images, (3, H, W) float in [0, 1], converted by
`semantix.metrics.inputs.to_vgg_input`: resized to size x size (default 512; the whole image, aspect
ratio not kept) and ImageNet-normalised.

Layers (torchvision `features` indices, the ones StyleID's evaluation code uses):
relu1_1 = 1, relu2_1 = 6, relu3_1 = 11, relu4_1 = 20, relu5_1 = 29.

CFSD: Content Feature Structural Distance of StyleID (Chung, Hyun, Heo, "Style Injection in Diffusion:
A Training-free Approach for Adapting Large-scale Diffusion Models for Style Transfer", CVPR 2024),
following its evaluation code: relu3_1 features, lower is better. Definition in `cfsd_from_features`.
`size`: None scores each pair at its own size, as StyleID's `compute_patch_simi` (`ToTensor()` of the
files, no resize: the `styleid` preset); an int resizes both to size x size (the extended presets'
512, which makes values comparable across datasets of other sizes: CFSD grows with the number of
locations, e.g. +23 % on a 384 x 512 pair scored at 512 x 512 vs natively).

Gram distance: the Gram-matrix style distance of Gatys, Ecker, Bethge ("Image Style Transfer Using
Convolutional Neural Networks", CVPR 2016) over relu1_1..relu5_1, as defined in docs/metrics.md, lower
is better. StyleID's evaluation `GramLoss` is NOT this: it sums each layer's whole "Gram" product into
one scalar (the squared norm of the flattened features) and takes the MSE of those scalars, which
discards all channel correlations; we follow the definition in `gram_distance` instead.
"""

from __future__ import annotations

import torch
import torchvision

from semantix.checkpoints import load_state_dict_file
from semantix.metrics.base import Compares, SampleMetric
from semantix.metrics.inputs import to_vgg_input
from semantix.metrics.weights import (
    TORCHVISION,
    is_random,
    metric_device,
    require_file,
    seeded,
    shared_model,
    torch_hub_checkpoint,
)

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision VGG19_Weights.IMAGENET1K_V1
VGG19_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
GRAM_LAYERS = tuple(VGG19_LAYERS)


def load_vgg19_features(weights: str, setting: str = "weights") -> torch.nn.Sequential:
    """The VGG19 feature trunk (eval, frozen, on CPU) with `weights` (see the module docstring); `setting`
    is named in weights errors."""
    if is_random(weights):
        return _frozen(seeded(lambda: torchvision.models.vgg19(weights=None).features))
    candidates = [torch_hub_checkpoint(VGG19_FILE)] if weights == TORCHVISION else []
    path = require_file(
        setting, weights, candidates,
        expected=f"torchvision's VGG19 IMAGENET1K_V1 state dict {VGG19_FILE}",
        how_to_get=f"On a machine with network, `torchvision.models.vgg19(weights='IMAGENET1K_V1')` puts it "
                   f"in {torch_hub_checkpoint(VGG19_FILE).parent}; copy it there or anywhere.",
    )
    state = load_state_dict_file(path, setting)
    features = torchvision.models.vgg19(weights=None).features
    # The checkpoint holds the whole classifier too; only the trunk is needed, and strict loading of
    # the trunk still catches a wrong file.
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})
    return _frozen(features)


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    return module.eval().requires_grad_(False)


def vgg_activations(trunk: torch.nn.Sequential, batch: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Activations of `batch` at the named layers (keys of VGG19_LAYERS); runs the trunk only as deep
    as the deepest of them."""
    wanted = {VGG19_LAYERS[name]: name for name in layers}
    found = {}
    x = batch
    for index, module in enumerate(trunk[: max(wanted) + 1]):
        x = module(x)
        if index in wanted:
            # torchvision's ReLUs are in place, but the next module (a conv or pool) is not, so the
            # stored tensor is not overwritten later.
            found[wanted[index]] = x
    return found


def cfsd_from_features(content: torch.Tensor, output: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """CFSD from two (1, C, H, W) feature maps of the same shape.

    With F the N x C matrix of features (one row per location, N = H * W) divided by C, the
    location-similarity matrix is S = F F^T (N x N; S_ij = <f_i, f_j> / C^2). Row i of S is turned into
    a distribution over the N locations by a softmax along j: P (content) and Q (output). Then
    CFSD = sum_i KL(P_i || Q_i) = sum_i sum_j P_ij (log P_ij - log Q_ij),
    which is StyleID's `F.kl_div(log_softmax(S_output), softmax(S_content), reduction='batchmean')` for
    one image. Softmax and KL are per row, so computing `chunk_size` rows at a time is exact; it keeps
    memory at a few chunk_size x N matrices instead of N x N (16384^2 floats at 512 px).

    Computed in float64: the rows are nearly uniform (S_ij is small after dividing by C^2), so each
    row's KL is tiny, and float32 rounding of the log-softmax (about 1e-6 at log N = 9.7) is as large
    as the differences it measures; in float32 the total is off in the fourth digit and can even come
    out negative for nearly identical images.
    """
    c = content.shape[1]
    f_content = content.flatten(2)[0].T.double() / c
    f_output = output.flatten(2)[0].T.double() / c
    total = torch.zeros((), dtype=torch.float64, device=content.device)
    for start in range(0, f_content.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        log_p = torch.log_softmax(f_content[rows] @ f_content.T, dim=1)
        log_q = torch.log_softmax(f_output[rows] @ f_output.T, dim=1)
        total += torch.nn.functional.kl_div(log_q, log_p, reduction="sum", log_target=True)
    return total


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T / (C H W) for a (1, C, H, W) feature map (C x C)."""
    _, c, h, w = features.shape
    flat = features.reshape(c, h * w)
    return flat @ flat.T / (c * h * w)


def gram_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the squared Frobenius distance between the two images' Gram matrices."""
    return sum(((gram_matrix(a[name]) - gram_matrix(b[name])) ** 2).sum() for name in GRAM_LAYERS)


class _VGGMetric(SampleMetric):
    """Shared trunk handling; subclasses implement `score`."""

    pretrained = f"torchvision VGG19 IMAGENET1K_V1 ({VGG19_FILE})"

    def __init__(self, weights: str = TORCHVISION, size: int | None = 512, device: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.weights_source = weights
        self.size = size
        self.model_device = metric_device(device)
        # Built now, so that missing weights fail when the run starts, not at its first sample.
        self.trunk()

    def trunk(self) -> torch.nn.Sequential:
        """The process-wide VGG19 trunk for these weights and device (built on first use)."""
        return shared_model(
            ("vgg19", self.weights_source, self.model_device),
            lambda: load_vgg19_features(self.weights_source).to(self.model_device),
        )

    def activations(self, image: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        batch = to_vgg_input(image, size=self.size).to(self.model_device)
        return vgg_activations(self.trunk(), batch, layers)


class CFSD(_VGGMetric):
    """Content Feature Structural Distance (StyleID), output vs content, lower is better; see
    `cfsd_from_features`. `size`: None keeps the pair's own size (StyleID's evaluation); an int fixes
    the input resolution, since the value grows with the number of locations; `chunk_size` rows of the similarity matrix are held at
    once (memory only, the value does not depend on it)."""

    higher_is_better = False
    compares = Compares.CONTENT

    def __init__(self, weights: str = TORCHVISION, size: int | None = 512, chunk_size: int = 1024,
                 device: str = "auto", **kwargs):
        super().__init__(weights=weights, size=size, device=device, **kwargs)
        self.chunk_size = chunk_size

    @torch.no_grad()
    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        content = self.activations(target, ("relu3_1",))["relu3_1"]
        stylised = self.activations(output, ("relu3_1",))["relu3_1"]
        return cfsd_from_features(content, stylised, self.chunk_size).to(self.device)


class GramDistance(_VGGMetric):
    """Gram-matrix style distance, output vs reference(s), lower is better: VGG19 relu1_1..relu5_1 Gram
    matrices G = F F^T / (C H W), squared Frobenius distance summed over the five layers; the mean
    over references when there are several. `size`: the input resolution (None keeps each image's own
    size; the C H W normalisation makes Gram matrices of different sizes comparable)."""

    higher_is_better = False
    compares = Compares.REFERENCES

    @torch.no_grad()
    def score(self, output: torch.Tensor, target: tuple[torch.Tensor, ...]) -> torch.Tensor:
        stylised = self.activations(output, GRAM_LAYERS)
        distances = [gram_distance(stylised, self.activations(ref, GRAM_LAYERS)) for ref in target]
        return torch.stack(distances).mean().to(self.device)
