"""Downloads against a real local HTTP server, and safe extraction of hostile archives."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from httpserver import Files, serve

from fedmlp.archives import extract_tar, extract_zip
from fedmlp.download import fetch, is_complete
from fedmlp.errors import FedmlpError

BODY = os.urandom(3 * (1 << 20) + 12345)  # several chunks
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fedmlp.download.time.sleep", lambda seconds: None)  # the backoff still runs, without waiting


def test_good_download_is_verified_and_not_repeated(tmp_path: Path) -> None:
    files = Files({"/a.gz": BODY})
    with serve(files) as url:
        fetch(f"{url}/a.gz", tmp_path / "a.gz", MD5)
        fetch(f"{url}/a.gz", tmp_path / "a.gz", MD5)
    assert (tmp_path / "a.gz").read_bytes() == BODY and is_complete(tmp_path / "a.gz", MD5)
    assert len(files.requests) == 1, "a finished, verified download must not be fetched again"


def test_truncated_transfer_resumes_with_a_range_request(tmp_path: Path) -> None:
    files = Files({"/a.gz": BODY}, cut_once={"/a.gz": 1_000_000})
    with serve(files) as url:
        fetch(f"{url}/a.gz", tmp_path / "a.gz", MD5)
    assert (tmp_path / "a.gz").read_bytes() == BODY
    assert files.requests == [("/a.gz", None), ("/a.gz", "bytes=1000000-")]


def test_interrupted_download_is_resumed_later(tmp_path: Path) -> None:
    (tmp_path / "a.gz.part").write_bytes(BODY[:2_000_000])  # what an earlier, killed run left
    files = Files({"/a.gz": BODY})
    with serve(files) as url:
        fetch(f"{url}/a.gz", tmp_path / "a.gz", MD5)
    assert (tmp_path / "a.gz").read_bytes() == BODY and not (tmp_path / "a.gz.part").exists()
    assert files.requests == [("/a.gz", "bytes=2000000-")]


def test_server_errors_are_retried_client_errors_are_not(tmp_path: Path) -> None:
    files = Files({"/a.gz": BODY}, fail_once={"/a.gz": 503})
    with serve(files) as url:
        fetch(f"{url}/a.gz", tmp_path / "a.gz", MD5)
        with pytest.raises(FedmlpError, match=r"missing.gz.*HTTP 404"):
            fetch(f"{url}/missing.gz", tmp_path / "missing.gz")
    assert len(files.requests) == 3 and not (tmp_path / "missing.gz").exists()


def test_wrong_checksum_is_kept_aside_not_trusted(tmp_path: Path) -> None:
    files = Files({"/a.gz": BODY})
    with serve(files) as url:
        with pytest.raises(FedmlpError, match=r"a.gz: MD5 .* does not match the expected 0+; the file was moved aside"):
            fetch(f"{url}/a.gz", tmp_path / "a.gz", "0" * 32)
    assert not (tmp_path / "a.gz").exists() and not is_complete(tmp_path / "a.gz", "0" * 32)
    assert (tmp_path / "a.gz.bad-md5").read_bytes() == BODY


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("name", "kind", "target", "message"),
    [
        ("../../evil.txt", tarfile.REGTYPE, "", "outside the target"),
        ("/etc/evil.txt", tarfile.REGTYPE, "", "outside the target"),
        ("images/link.png", tarfile.SYMTYPE, "/etc/passwd", "links are not extracted"),
        ("images/hard.png", tarfile.LNKTYPE, "images/a.png", "links are not extracted"),
        ("images/fifo", tarfile.FIFOTYPE, "", "not a regular file"),
    ],
)
def test_hostile_tar_members_are_refused(tmp_path: Path, name: str, kind: bytes, target: str, message: str) -> None:
    archive = tmp_path / "images_001.tar.gz"
    archive.write_bytes(_tar([(_member("images/a.png"), b"png"), (_member(name, kind, target), b"")]))
    with pytest.raises(FedmlpError, match=f"images_001.tar.gz: refusing member '{name}'.*{message}"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is extracted from a hostile archive"
    assert not (tmp_path.parent / "evil.txt").exists()


def test_good_tar_and_truncated_tar(tmp_path: Path) -> None:
    data = _tar([(_member("images/a.png"), b"one"), (_member("images/b.png"), b"two")])
    (tmp_path / "good.tar.gz").write_bytes(data)
    assert extract_tar(tmp_path / "good.tar.gz", tmp_path / "out") == 2
    assert (tmp_path / "out/images/b.png").read_bytes() == b"two"
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FedmlpError, match="cut.tar.gz: corrupt or truncated archive"):
        extract_tar(tmp_path / "cut.tar.gz", tmp_path / "out2")


def test_zip_traversal_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("stage_2_train.csv", "ID,Label\n")
        zf.writestr("../escape.csv", "x")
    with pytest.raises(FedmlpError, match=r"a.zip: refusing member '../escape.csv'"):
        extract_zip(tmp_path / "a.zip", tmp_path / "out")


def test_progress_and_logs_name_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with serve(Files({"/a.gz": BODY})) as url:
        fetch(f"{url}/a.gz", tmp_path / "a.gz", MD5)
    assert "a.gz: downloaded and verified" in caplog.text
