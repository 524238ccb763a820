"""A store is verified in full once (by ``fedmlp verify`` or the first job); jobs then check only the identity
of images.npy against that record (fedmlp.store, docs/performance.md) and never train on a store
changed since without saying so."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from fedmlp import store as store_module
from fedmlp.cli import main
from fedmlp.errors import FedmlpError
from fedmlp.store import IMAGES, VERIFIED, ImageStore


def copy_store(store: ImageStore, root: Path) -> Path:
    """A copy of the session's store, verified as such (its record describes the copy's images)."""
    shutil.copytree(store.root, root)
    ImageStore.open(root).verify()
    return root


def flip_a_byte_keeping_size_and_mtime(images: Path) -> None:
    """Change one image byte in place, then put the modification time back (``touch -d``)."""
    st = os.stat(images)
    with open(images, "r+b") as handle:
        handle.seek(st.st_size - 1)
        last = handle.read(1)
        handle.seek(st.st_size - 1)
        handle.write(bytes([last[0] ^ 0xFF]))
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(images).st_size == st.st_size and os.stat(images).st_mtime_ns == st.st_mtime_ns


def no_full_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, chunk: int = 0) -> str:
        raise AssertionError(f"{path} read in full")

    monkeypatch.setattr(store_module, "sha256", refuse)


def test_the_first_job_records_the_verification_and_later_jobs_do_not_read_the_images(
        store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    shutil.copytree(store.root, root)
    (root / VERIFIED).unlink(missing_ok=True)  # as ingest left it
    ImageStore.open(root, require_verified=True)
    record = json.loads((root / VERIFIED).read_text())
    assert record["images_sha256"] == store.manifest["sha256"][IMAGES]
    assert record["images"]["size"] == (root / IMAGES).stat().st_size
    no_full_read(monkeypatch)
    assert ImageStore.open(root, require_verified=True).image_ids == store.image_ids


def test_a_byte_changed_behind_the_same_mtime_is_refused_then_found(store: ImageStore, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The change time gives the edit away (the cheap check); ``fedmlp verify`` then finds the damage."""
    root = copy_store(store, tmp_path / "store")
    flip_a_byte_keeping_size_and_mtime(root / IMAGES)
    code = main(["--log-level", "ERROR", "train", "--store", str(root), "--partition", str(tmp_path / "unused.json"), "--method",
                 "fedavg-full", "--seed", "0", "--out-model", str(tmp_path / "model.pt"), "--out-rounds", str(tmp_path / "rounds.csv")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"{root / IMAGES}: changed since it was last verified in full (ctime_ns differ" in lines[0]
    assert f"run 'fedmlp verify {root}'" in lines[0]
    assert not (tmp_path / "model.pt").exists()
    assert main(["--log-level", "ERROR", "verify", str(root)]) == 2
    assert re.search(r"images\.npy: SHA-256 differs from the one manifest\.json records", capsys.readouterr().err)


def test_a_touched_store_is_accepted_after_fedmlp_verify(store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_store(store, tmp_path / "store")
    os.utime(root / IMAGES)  # same bytes, new modification time
    with pytest.raises(FedmlpError, match=r"mtime_ns, ctime_ns differ from \.verified\.json\); run 'fedmlp verify "):
        ImageStore.open(root, require_verified=True)
    assert main(["--log-level", "ERROR", "verify", str(root)]) == 0
    assert f"{root}: verified ({len(store.image_ids)} images" in capsys.readouterr().out
    no_full_read(monkeypatch)
    ImageStore.open(root, require_verified=True)


def test_a_new_manifest_checksum_is_refused(store: ImageStore, tmp_path: Path) -> None:
    """The record belongs to the images' SHA-256 of the manifest it was made with."""
    root = copy_store(store, tmp_path / "store")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["sha256"][IMAGES] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FedmlpError, match=r"the SHA-256 in manifest\.json differ"):
        ImageStore.open(root, require_verified=True)


@pytest.mark.parametrize("record", ["none", "of another file"])
def test_an_unverified_file_is_verified_in_full_before_use(store: ImageStore, tmp_path: Path, record: str) -> None:
    """No record (a store from before records), or a record of another file (a copy, a dvc pull): the
    job verifies the images in full, so a damaged one is found, and records a sound one."""
    root = tmp_path / "store"
    shutil.copytree(store.root, root)
    if record == "none":
        (root / VERIFIED).unlink(missing_ok=True)
    else:  # the session store's record, describing another inode
        ImageStore.open(store.root).verify()
        shutil.copy(store.root / VERIFIED, root / VERIFIED)
    ImageStore.open(root, require_verified=True)
    assert json.loads((root / VERIFIED).read_text())["images"]["inode"] == (root / IMAGES).stat().st_ino

    damaged = tmp_path / "damaged"
    shutil.copytree(store.root, damaged)
    flip_a_byte_keeping_size_and_mtime(damaged / IMAGES)
    with pytest.raises(FedmlpError, match=r"images\.npy: SHA-256 differs from the one manifest\.json records"):
        ImageStore.open(damaged, require_verified=True)
