"""The federated loop, the FedAvg methods, augmentation and checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmlp import checkpoint, federated, runtime
from fedmlp.augment import random_affine
from fedmlp.config import AugmentConfig, ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.loader import make_client
from fedmlp.methods import registry
from fedmlp.methods.base import weighted_average
from fedmlp.methods.messages import Upload
from fedmlp.store import ImageStore

TINY_TRAIN = TrainConfig(rounds=2, batch_size=8, precision="fp32", device="cpu")
TINY_MODEL = ModelConfig(width=4)


def _train(store: ImageStore, federation: dict, method: str, seed: int = 0) -> tuple[torch.nn.Module, list]:
    rt = runtime.resolve("cpu", "fp32", 1)
    result = federated.run(store, federation, registry.create(method), TINY_TRAIN, TINY_MODEL, seed, rt)
    return result.model, result.history


def test_clients_never_see_missing_labels(store: ImageStore, federation: dict) -> None:
    entry = federation["clients"][0]
    client = make_client(store, 0, entry["images"], entry["annotated_classes"])
    annotated = client.annotated.numpy()
    assert annotated.sum() == 2
    truth = store.labels[client.rows]
    assert truth[:, ~annotated].any(), "fixture should have hidden positives"
    np.testing.assert_array_equal(client.observed.numpy()[:, ~annotated], 0)
    np.testing.assert_array_equal(client.observed.numpy()[:, annotated], truth[:, annotated])


def test_same_seed_same_result_other_seed_differs(store: ImageStore, federation: dict) -> None:
    model_a, history_a = _train(store, federation, "fedavg-full", seed=1)
    model_b, history_b = _train(store, federation, "fedavg-full", seed=1)
    model_c, _ = _train(store, federation, "fedavg-full", seed=2)
    assert [(r.train_loss, r.test_mAP) for r in history_a] == [(r.train_loss, r.test_mAP) for r in history_b]
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    assert not all(torch.equal(a, c) for a, c in zip(model_a.state_dict().values(), model_c.state_dict().values()))
    assert len(history_a) == TINY_TRAIN.rounds and np.isfinite(history_a[-1].test_mAP)


def test_validation_scores_every_scored_round_and_sets_the_final_thresholds(store: ImageStore, federation: dict,
                                                                            validated_federation: dict, tmp_path: Path) -> None:
    from fedmlp.commands.evaluate import score
    from fedmlp.inference import predict_proba
    from fedmlp.metrics import best_val_round, f1_thresholds

    rt = runtime.resolve("cpu", "fp32", 1)
    train = dataclasses.replace(TINY_TRAIN, rounds=3, eval_every=2)  # rounds 2 and 3 scored
    result = federated.run(store, validated_federation, registry.create("fedavg-masked"), train, TINY_MODEL, 0, rt)
    rows = federated.history_rows(result.history)
    assert [np.isfinite([r["test_mAP"], r["val_mAP"], r["val_AUROC"]]).tolist() for r in rows] == [[False] * 3, [True] * 3, [True] * 3]

    metrics = score(result.model, store, validated_federation, rows, {}, "cpu", 1, tmp_path / "metrics.json", tmp_path / "p.csv")
    val_rows = store.rows(validated_federation["val"])
    chosen = f1_thresholds(store.labels[val_rows], predict_proba(result.model, store, val_rows, rt), store.classes)
    assert metrics["threshold_source"] == "validation" and metrics["thresholds"] == chosen != dict.fromkeys(store.classes, 0.5)
    assert metrics["best_val"] == best_val_round(rows) and metrics["best_val"]["round"] in (2, 3)
    assert metrics["overall"]["mAP"] == pytest.approx(rows[-1]["test_mAP"])  # the reported number stays the final round's
    assert json.loads((tmp_path / "metrics.json").read_text())["best_val"] == metrics["best_val"]

    nan_rows = [{**r, "val_mAP": float("nan"), "val_AUROC": float("nan")} for r in rows]
    plain = score(result.model, store, federation, nan_rows, {}, "cpu", 1, tmp_path / "plain.json", tmp_path / "p.csv")
    assert plain["threshold_source"] == "fixed" and plain["thresholds"] == dict.fromkeys(store.classes, 0.5) and plain["best_val"] is None


def test_fedavg_full_differs_from_partial(store: ImageStore, federation: dict) -> None:
    full, _ = _train(store, federation, "fedavg-full")
    partial, _ = _train(store, federation, "fedavg-partial")
    assert not torch.equal(full.head.weight, partial.head.weight)


def test_weighted_average() -> None:
    updates = [
        Upload(0, n_samples=1, weights={"w": torch.full((2,), 1.0), "n": torch.tensor(3)}),
        Upload(1, n_samples=3, weights={"w": torch.full((2,), 4.0), "n": torch.tensor(5)}),
    ]
    averaged = weighted_average(updates)
    assert torch.allclose(averaged["w"], torch.full((2,), 3.25))
    assert averaged["n"].item() == 5
    updates[0].weight = 3.0  # an aggregation weight other than the size (CBAFed)
    assert torch.allclose(weighted_average(updates)["w"], torch.full((2,), 2.5))


def test_masked_loss_ignores_missing_classes(store: ImageStore) -> None:
    method = registry.create("fedavg-masked")
    logits = torch.zeros(4, 5, requires_grad=True)
    observed = torch.ones(4, 5)
    annotated = torch.tensor([True, False, True, False, False])

    class Ctx:
        model = staticmethod(lambda images: logits)
        augment = staticmethod(lambda images, policy="weak": images)

    batch = type("B", (), {"images": None, "observed": observed, "annotated": annotated})
    method.loss(Ctx, batch).backward()
    assert (logits.grad[:, ~annotated] == 0).all() and (logits.grad[:, annotated] != 0).all()


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(FedmlpError, match="unknown method 'fedavgg'.*fedavg-full"):
        registry.create("fedavgg")


def test_augmentation_is_seeded_and_identity_when_disabled() -> None:
    images = torch.randint(0, 256, (6, 1, 24, 24), dtype=torch.uint8)
    config = AugmentConfig()
    a = random_affine(images, config, torch.Generator().manual_seed(1))
    b = random_affine(images, config, torch.Generator().manual_seed(1))
    c = random_affine(images, config, torch.Generator().manual_seed(2))
    assert a.shape == (6, 1, 24, 24) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    identity = AugmentConfig(rotation_deg=0, translate=0, scale_min=1, scale_max=1, hflip=False)
    out = random_affine(images, identity, torch.Generator().manual_seed(1))
    assert torch.allclose(out, images.float() / 255, atol=1e-5)


def test_checkpoint_roundtrip_and_refusals(tmp_path: Path, store: ImageStore) -> None:
    model = federated.init_model(TINY_MODEL, 5, 0, runtime.resolve("cpu", "fp32"))
    meta = {"model": dataclasses.asdict(TINY_MODEL), "classes": store.classes, "method": "x", "seed": 0}
    checkpoint.save(tmp_path / "m.pt", model, meta)
    loaded, loaded_meta = checkpoint.load(tmp_path / "m.pt")
    assert loaded_meta == meta
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))

    class Payload:  # an arbitrary pickled object: must never be unpickled
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format": 1, "state_dict": {}, "meta": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(FedmlpError, match="evil.pt"):
        checkpoint.load(tmp_path / "evil.pt")
    wrong = dict(meta, model=dict(meta["model"], width=8))
    torch.save({"format": 1, "state_dict": model.state_dict(), "meta": wrong}, tmp_path / "wrong.pt")
    with pytest.raises(FedmlpError, match="wrong.pt.*do not fit"):
        checkpoint.load(tmp_path / "wrong.pt")


@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_autotunes_convolutions_unless_deterministic(monkeypatch: pytest.MonkeyPatch, deterministic: bool) -> None:
    """On CUDA, cuDNN picks the fastest algorithm per shape (benchmark mode) unless train.deterministic
    asks for reproducible kernels. No GPU here: CUDA's availability is the one thing stood in for."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        rt = runtime.resolve("cuda", "fp32", deterministic=deterministic)
        assert rt.device.type == "cuda"
        assert torch.backends.cudnn.benchmark is (not deterministic)
        assert torch.backends.cudnn.deterministic is deterministic
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
