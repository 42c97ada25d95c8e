"""LPIPS distance, output vs content: lower is better.

LPIPS: Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR 2018, through the `lpips` package: version 0.1, AlexNet trunk by default
(`net="alex"`, the convention of ArtFID: Wright and Ommer, "ArtFID: Quantitative Evaluation of Neural
Style Transfer", GCPR 2022; `net="vgg"` is allowed too), the package's shipped linear layers, spatial
average over the image.

Input convention: both images at their own size (the harness gives output and content the same size;
no resize). `LPIPSNetwork` takes harness images in [0, 1] (checked) and maps them to [-1, 1] with
`inputs.to_lpips_input` itself: the lpips network expects [-1, 1] and silently gives lower distances
for [0, 1] inputs, so no caller hands it a raw tensor. ArtFID's reference code first resizes the short side to 512,
so our values match its LPIPS term for images 512 px on the short side.

Weights (`weights` in the config): the linear layers always come from the lpips package. The trunk is
`torchvision` (torchvision's ImageNet checkpoint, which must already be in torch hub's cache: it is
not downloaded here; a job fetches its missing files first, `semantix.weights`), a path to a local torchvision AlexNet/VGG16 checkpoint, or `random` (seeded
random trunk, shipped linear layers kept).
"""

from __future__ import annotations

import warnings

import torch

from semantix.checkpoints import load_state_dict_file
from semantix.metrics.base import Compares, SampleMetric
from semantix.metrics.inputs import to_lpips_input
from semantix.metrics.weights import (
    TORCHVISION,
    is_random,
    metric_device,
    require_file,
    seeded,
    shared_model,
    torch_hub_checkpoint,
)


def _torchvision_weights(net: str):
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    return {"alex": AlexNet_Weights.IMAGENET1K_V1, "vgg": VGG16_Weights.IMAGENET1K_V1}[net]


class LPIPSNetwork:
    """The lpips network behind the [-1, 1] guard.

    A plain object, not an nn.Module: assigned to a torchmetrics Metric, a module would become its
    child, so `metric.to(...)` would move the network shared with other instances and the metric's
    `state_dict()` would carry its weights.
    """

    def __init__(self, model: torch.nn.Module, device: str):
        self.model = model.eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def __call__(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        """LPIPS of two harness images ((3, H, W) in [0, 1]; anything else raises), as a 0-d CPU tensor.

        The conversion to [-1, 1] happens here and only here, so no caller can hand the network a
        [0, 1] tensor (which it would silently score lower).
        """
        batch0, batch1 = to_lpips_input(image0), to_lpips_input(image1)
        return self.model(batch0.to(self.device), batch1.to(self.device)).reshape(()).cpu()


def shared_lpips(net: str, weights: str, device: str, setting: str = "weights") -> LPIPSNetwork:
    """The process-wide LPIPS network for (net, weights, device), used by `lpips` and ArtFID alike."""
    return shared_model(("lpips", net, weights, device), lambda: build_lpips(net, weights, device, setting))


def build_lpips(net: str, weights: str, device: str, setting: str = "weights") -> LPIPSNetwork:
    """lpips v0.1 with the shipped linear layers and the trunk of `weights`; `setting` (the argument
    holding `weights`) is named in weights errors."""
    import lpips

    trunk_state = None
    if not is_random(weights):
        # Resolved before anything is built, so that a missing file gives the clear error below
        # instead of torchvision starting a download.
        tv_weights = _torchvision_weights(net)
        filename = tv_weights.url.rsplit("/", 1)[-1]
        candidates = [torch_hub_checkpoint(filename)] if weights == TORCHVISION else []
        path = require_file(
            setting, weights, candidates,
            expected=f"torchvision's {net} ImageNet checkpoint {filename} (the LPIPS trunk; the linear layers "
                     "ship with the lpips package)",
            how_to_get=f"On a machine with network, `python -c \"import torchvision; "
                       f"torchvision.models.get_weight('{tv_weights}').get_state_dict()\"` puts it in "
                       f"{torch_hub_checkpoint(filename).parent} (set TORCH_HOME to move that cache).",
        )
        trunk_state = load_state_dict_file(path, setting)

    def build() -> torch.nn.Module:
        # The trunk is always built random and then loaded from the file resolved above: lpips would
        # otherwise fetch it through torchvision's deprecated `pretrained=True`, which downloads.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Arguments other than a weight enum", category=UserWarning)
            warnings.filterwarnings("ignore", message="The parameter 'pretrained' is deprecated", category=UserWarning)
            return lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)

    model = seeded(build)
    if trunk_state is not None:
        _load_trunk(model, trunk_state)
    return LPIPSNetwork(model.to(device), device)


def _load_trunk(model: torch.nn.Module, state: dict) -> None:
    """Load a torchvision AlexNet/VGG16 state dict into lpips' trunk, whose slices keep the index of
    each layer in torchvision's `features` ("slice2.3.weight" is "features.3.weight")."""
    trunk = {name: state[f"features.{name.split('.', 1)[1]}"] for name in model.net.state_dict()}
    model.net.load_state_dict(trunk, strict=True)


class LPIPSDistance(SampleMetric):
    higher_is_better = False
    compares = Compares.CONTENT
    pretrained = "lpips 0.1 linear layers (shipped) + torchvision AlexNet ImageNet trunk (alexnet-owt-7be5be79.pth)"

    def __init__(self, net: str = "alex", weights: str = TORCHVISION, device: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if net not in ("alex", "vgg"):
            raise ValueError(f"LPIPSDistance: net must be 'alex' (the ArtFID convention) or 'vgg', got {net!r}")
        self.net_name = net
        self.weights_source = weights
        device = metric_device(device)
        self.network = shared_lpips(net, weights, device)

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.network(output, target)
