"""Ctrl-C, kill, a full disk, a read-only or impossible output path: a clear line, never a half-written
output that a rerun would trust, and temporary files that the next run removes."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
import pytest
from conftest import bin_dir
from pydicom.data import get_testdata_file

from fedmlp.atomic import atomic_path
from fedmlp.cli import main
from fedmlp.sources import rsna
from fedmlp.store import ImageStore

HEAD_CT = Path(get_testdata_file("693_UNCR.dcm"))
N_SLOW = 600  # about 3 s of decoding: long enough to interrupt in the middle


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "FEDMLP_PROGRESS": "0"}
    # SIGINT back to its default in the child: a shell that starts a job in the background ignores it,
    # the child would inherit that, and Python then never turns Ctrl-C into KeyboardInterrupt.
    return subprocess.Popen([f"{bin_dir()}/fedmlp", "--log-level", "ERROR", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"ended before it could be interrupted: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def slow_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Many links to one real head CT in the Kaggle layout: an ingest that takes a few seconds."""
    root = tmp_path_factory.mktemp("slow")
    (root / rsna.IMAGE_DIR).mkdir()
    ids = [f"ID_{i:09x}" for i in range(N_SLOW)]
    for image_id in ids:
        os.link(HEAD_CT, rsna.image_path(root, image_id))
    rows = [f"{i}_{s},0" for i in ids for s in rsna.SUBTYPES]
    (root / rsna.LABEL_FILE).write_text("\n".join(["ID,Label", *rows]) + "\n")
    return root


def ingest(raw: Path, out: Path) -> subprocess.Popen:
    return start("ingest", "--dataset", "ich", "--raw", str(raw), "--out", str(out), "--settings", '{"size": 32}')


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "terminate"])
def test_interrupted_ingest_leaves_nothing(slow_raw: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "stores" / "header32"
    process = ingest(slow_raw, out)
    wait_for(lambda: out.parent.is_dir() and temporaries(out.parent), process)
    time.sleep(0.3)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == "fedmlp ingest: interrupted"
    assert not out.exists() and temporaries(out.parent) == []
    assert not out.with_name("header32.skipped.csv").exists()


def test_killed_ingest_leaves_only_temporaries_the_rerun_removes(slow_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "stores" / "header32"
    process = ingest(slow_raw, out)
    wait_for(lambda: out.parent.is_dir() and temporaries(out.parent), process)
    time.sleep(0.3)
    process.kill()
    process.communicate(timeout=60)
    assert not out.exists(), "no store a rerun would trust"
    (stale,) = temporaries(out.parent)
    rerun = ingest(slow_raw, out)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert not stale.exists() and temporaries(out.parent) == []
    assert ImageStore.open(out).images.shape == (N_SLOW, 1, 32, 32)


def test_interrupted_synth_leaves_no_label_file(tmp_path: Path) -> None:
    """The slices are written into a temporary directory and the label file last, both renamed into
    place at the end: an interruption leaves neither, nor any DICOM."""
    process = start("synth", "--out", str(tmp_path), "--settings", json.dumps({"n_images": 400, "image_size": 128}))
    wait_for(lambda: any(len(os.listdir(t)) > 20 for t in temporaries(tmp_path)), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == "fedmlp synth: interrupted"
    assert not (tmp_path / rsna.LABEL_FILE).exists() and not (tmp_path / rsna.IMAGE_DIR).exists() and temporaries(tmp_path) == []


def test_atomic_write_interrupted_keeps_the_old_file(tmp_path: Path) -> None:
    """What every stage's outputs go through: an interruption mid-write leaves the earlier result."""
    target = tmp_path / "metrics.json"
    target.write_text("earlier result")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "earlier result" and temporaries(tmp_path) == []


# --- full disk, read-only, impossible paths ---------------------------------------------------------

def in_private_mount(script: str, options: str) -> subprocess.CompletedProcess:
    """Run ``script`` with a small tmpfs mounted at $MNT, in private user and mount namespaces (no
    root needed, nothing visible outside). Skips where the system does not allow it, except under
    FEDMLP_REQUIRE_TMPFS=1 (as .ci/run sets), where it fails."""
    skip = pytest.fail if os.environ.get("FEDMLP_REQUIRE_TMPFS") == "1" else pytest.skip
    if shutil.which("unshare") is None:
        skip("unshare is not installed")
    mnt = Path(os.environ.get("TMPDIR", "/tmp")) / f"fedmlp-mnt-{os.getpid()}"
    mnt.mkdir(exist_ok=True)
    try:
        probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
        if probe.returncode != 0:
            skip(f"cannot mount a private tmpfs here: {probe.stderr.decode().strip()}")
        env = {**os.environ, "FEDMLP_PROGRESS": "0", "MNT": str(mnt), "PATH": f"{bin_dir()}{os.pathsep}{os.environ['PATH']}"}
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs \"$MNT\" && {script}"],
                              capture_output=True, text=True, env=env, timeout=120)
    finally:
        mnt.rmdir()


def test_full_disk_during_ingest(raw_dataset: Path) -> None:
    """The image array is allocated up front: a full disk stops ingest before decoding, with the path."""
    result = in_private_mount(f"fedmlp --log-level ERROR ingest --raw {raw_dataset} --out \"$MNT/store\" --settings '{{\"size\": 64}}'"
                              " ; code=$?; ls -A \"$MNT\"; exit $code", "size=128k")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fedmlp ingest: error: config key 'preprocess.size': 80 images of 1 × 64 × 64 px in the image array "
                           "need at least 327,680 bytes (320.0 KiB) in ") and "free; lower it" in line, line
    assert result.stdout.strip() == "", "nothing left in the full directory"


def test_full_disk_before_writing_files() -> None:
    result = in_private_mount("fedmlp --log-level ERROR synth --out \"$MNT/raw\" --settings '{\"n_images\": 40}' ; code=$?; "
                              "ls -A \"$MNT\"; exit $code", "size=64k")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fedmlp synth: error: config key 'synthetic.n_images': 40 DICOM slices of 128 × 128 px"), line
    assert result.stdout.strip() == "", "refused before writing anything"


def _less_free_than(path: Path, needed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a disk with room for ``needed`` bytes, report 1 GiB free instead (os.statvfs, what the check
    reads), so that the refusal is tested on every machine, not skipped on a large disk."""
    if shutil.disk_usage(path).free < needed:
        return
    real = os.statvfs

    def statvfs(target):
        s = real(target)
        return os.statvfs_result((s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, (1 << 30) // s.f_frsize,
                                  s.f_files, s.f_ffree, s.f_favail, s.f_flag, s.f_namemax))

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_synth_refuses_a_dataset_larger_than_the_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The largest allowed dataset (1,000,000 slices of 1024 px, about 2.1 TB) on a disk with less free."""
    needed = 1_000_000 * (2 * 1024 * 1024 + 4096)  # each slice rounded up to a 4 KiB block at least
    _less_free_than(tmp_path, needed, monkeypatch)
    settings = json.dumps({"n_images": 1_000_000, "image_size": 1024})
    assert main(["synth", "--out", str(tmp_path / "raw"), "--settings", settings]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    found = re.fullmatch(r"fedmlp synth: error: config key 'synthetic.n_images': 1,000,000 DICOM slices of 1024 × 1024 px "
                         r"\(synthetic.image_size\) need at least ([\d,]+) bytes \(.*\) in (.*), which has ([\d,]+) bytes \(.*\) free; "
                         r"lower it, free some space, or write elsewhere", line)
    assert found, line
    assert int(found[1].replace(",", "")) >= 2 * 10**12 > int(found[3].replace(",", "")), "bytes needed against bytes free"
    assert Path(found[2]) == tmp_path and list(tmp_path.iterdir()) == [], "nothing written"


def test_bench_refuses_a_store_larger_than_the_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    needed = 1_000_000 * 3 * 1024 * 1024
    _less_free_than(tmp_path, needed, monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = ["bench", "--stage", "loader", "--images", "1000000", "--size", "1024", "--channels", "3", "--device", "cpu"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fedmlp bench: error: --images: 1,000,000 images of 3 × 1024 × 1024 px (--channels, --size) in the "
                           f"temporary store need at least {needed:,} bytes (2.9 TiB) in {tmp_path}, which has "), line
    assert "free; lower them" in line and "--store" in line
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_synth_writes_leaves_the_old_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills half way (after the free-space check passed: others write too): no partial set of
    DICOMs is left, and the dataset written before stays whole."""
    out = tmp_path / "raw"
    assert main(["synth", "--out", str(out), "--settings", json.dumps({"n_images": 12, "image_size": 32})]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def fill_up(self, filename, **kwargs) -> None:
        calls.append(filename)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        original(self, filename, **kwargs)

    original = pydicom.Dataset.save_as
    monkeypatch.setattr(pydicom.Dataset, "save_as", fill_up)
    assert main(["synth", "--out", str(out), "--settings", json.dumps({"n_images": 20, "image_size": 48})]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fedmlp synth: error: ") and "no space left on device; free some space" in line, line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert temporaries(out) == [] and temporaries(tmp_path) == []


def test_read_only_results(store: ImageStore) -> None:
    result = in_private_mount(f"fedmlp split --store {store.root} --out \"$MNT/results/split.json\"", "ro,size=64k")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fedmlp split: error: ") and "/results: read-only file system; the output must go to a writable file system" in line


def test_output_under_a_file(store: ImageStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results").write_text("a file where a directory should be")
    assert main(["split", "--store", str(store.root), "--out", str(tmp_path / "results" / "split.json")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fedmlp split: error: ") and str(tmp_path / "results") in line
    assert (tmp_path / "results").read_text() == "a file where a directory should be"


def test_full_disk_simulated_at_the_allocation(raw_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The same seam as test_full_disk_during_ingest, for systems where a private tmpfs is not allowed."""
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert main(["ingest", "--raw", str(raw_dataset), "--out", str(tmp_path / "store")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fedmlp ingest: error: {tmp_path / 'store'}: no space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_two_ingests_into_one_store(slow_raw: Path, tmp_path: Path) -> None:
    """A second ingest into a store being written fails at once with one line; the first one's
    temporary directory and its skipped-files report are left alone, and it completes."""
    out = tmp_path / "stores" / "header32"
    first = ingest(slow_raw, out)
    wait_for(lambda: out.parent.is_dir() and temporaries(out.parent), process=first)
    (live,) = temporaries(out.parent)
    second = ingest(slow_raw, out)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{out}: another process is writing it right now" in err
    assert live.exists() and first.poll() is None, "the first ingest goes on"
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert ImageStore.open(out).images.shape == (N_SLOW, 1, 32, 32) and temporaries(out.parent) == []
