"""Models: pretrained weights from torchvision or a checked local file; a clear error offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision

from fedmlp.config import ModelConfig
from fedmlp.errors import FedmlpError
from fedmlp.models import build_model


def _torchvision_style_file(tmp_path: Path) -> tuple[Path, dict]:
    state = torchvision.models.resnet18().state_dict()
    raw = tmp_path / "weights.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    named = tmp_path / f"resnet18-{digest[:8]}.pth"
    raw.rename(named)
    return named, state


def test_local_weights_are_checked_and_loaded(tmp_path: Path) -> None:
    path, state = _torchvision_style_file(tmp_path)
    model = build_model(ModelConfig(arch="resnet18", weights_path=str(path)), n_classes=8)
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    assert model.head.out_features == 8


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    path, _ = _torchvision_style_file(tmp_path)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(FedmlpError, match=r"model.weights_path.*SHA-256 .* expected"):
        build_model(ModelConfig(arch="resnet18", weights_path=str(path)), n_classes=5)
    other = tmp_path / "mine.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(FedmlpError, match="model.weights_path"):
        build_model(ModelConfig(arch="resnet18", weights_path=str(other), weights_sha256="00ff"), n_classes=5)


def test_offline_pretrained_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there: every download fails at once
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(FedmlpError, match=r"model.pretrained.*could not download.*resnet18-f37072fd.pth.*model.weights_path"):
        build_model(ModelConfig(arch="resnet18", pretrained=True), n_classes=5)
