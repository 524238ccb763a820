"""Classifiers with a penultimate-feature output (FedMLP's prototypes live in that space).

Models take float images in [0, 1] of shape (B, C, H, W) with C = 1 or 3; one channel is repeated to
three, and normalisation happens inside, so checkpoints are self-contained.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch
import torch.nn as nn

from fedmlp.config import ModelConfig
from fedmlp.errors import FedmlpError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """``backbone`` maps images to features (B, D); ``head`` maps features to class logits."""

    def __init__(self, backbone: nn.Module, feature_dim: int, n_classes: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, n_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class GlobalMeanPool(nn.Module):
    """Mean over the spatial axes. Same value as AdaptiveAvgPool2d(1), but its CUDA backward is
    deterministic (adaptive pooling's is not), so ``train.deterministic`` can hold on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def compact_cnn(width: int) -> tuple[nn.Module, int]:
    """Eight 3×3 conv layers in four stride-2 stages: fast on two CPU cores at 64 px."""
    layers: list[nn.Module] = []
    c_in = 3
    for stage in range(4):
        c_out = width * 2**stage
        layers += _conv(c_in, c_out, stride=2) + _conv(c_out, c_out)
        c_in = c_out
    layers += [GlobalMeanPool(), nn.Flatten()]
    return nn.Sequential(*layers), c_in


def resnet18(config: ModelConfig) -> nn.Module:
    # imported here: torchvision pulls in torch._dynamo (about 2 s per job start-up) and only ResNet-18 needs it
    import torchvision

    if config.weights_path:
        path = Path(config.weights_path)
        if not path.exists():
            raise FedmlpError(f"config key 'model.weights_path': {path} does not exist")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        # torchvision names its files resnet18-<first hex digits of the SHA-256>.pth; check that too
        named = re.search(r"-([0-9a-f]{8,64})\.pth?$", path.name)
        expected = config.weights_sha256 or (named.group(1) if named else None)
        if expected and not digest.startswith(expected.lower()):
            raise FedmlpError(f"config key 'model.weights_path': {path} has SHA-256 {digest[:16]}…, expected {expected}…")
        net = torchvision.models.resnet18()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FedmlpError(f"config key 'model.weights_path': {path} is not a plain PyTorch state dict ({exc})") from None
        state = state.get("state_dict", state)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise FedmlpError(f"config key 'model.weights_path': {path} is not a torchvision ResNet-18 state dict")
        log.info("loaded ResNet-18 weights from %s (sha256 %s, checked)", path, digest[:12])
        return net
    if config.pretrained:
        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        try:
            return torchvision.models.resnet18(weights=weights)
        except Exception as exc:  # offline: urllib raises URLError, hub may raise RuntimeError
            raise FedmlpError(
                f"config key 'model.pretrained': could not download ImageNet weights ({type(exc).__name__}); "
                f"download {weights.url} on a machine with internet access and set model.weights_path to the file"
            ) from None
    return torchvision.models.resnet18()


def build_model(config: ModelConfig, n_classes: int) -> Classifier:
    if config.arch == "compact-cnn":
        if config.pretrained or config.weights_path:
            raise FedmlpError("config key 'model.pretrained': pretrained weights exist only for arch resnet18")
        backbone, dim = compact_cnn(config.width)
        return Classifier(backbone, dim, n_classes, (0.5,) * 3, (0.25,) * 3)
    if config.arch == "resnet18":
        net = resnet18(config)
        dim = net.fc.in_features
        net.fc = nn.Identity()
        net.avgpool = GlobalMeanPool()
        return Classifier(net, dim, n_classes, IMAGENET_MEAN, IMAGENET_STD)
    raise FedmlpError(f"config key 'model.arch': {config.arch!r} is not one of compact-cnn, resnet18")
