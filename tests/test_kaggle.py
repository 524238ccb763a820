"""The RSNA ICH download step with the Kaggle client replaced at its narrowest seam (the API object):
missing credentials, HTTP 403 (rules not accepted), a partial download, success. Credentials never show."""

from __future__ import annotations

import logging
import sys
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from fedmlp.cli import main
from fedmlp.config import PreprocessConfig
from fedmlp.errors import FedmlpError
from fedmlp.sources import kaggle, rsna
from fedmlp.sources.kaggle import IchConfig
from fedmlp.sources.rsna import ingest_ich
from fedmlp.store import ImageStore

SECRET = "s3cr3t-kaggle-key-0123456789"


class ApiException(Exception):
    """Shaped like the kaggle client's own: an HTTP status on the exception."""

    def __init__(self, status: int):
        super().__init__(f"({status}) Reason: Forbidden, HTTP response body: key={SECRET}")
        self.status = status


class FakeApi:
    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.calls = 0

    def competition_download_files(self, competition: str, path: str, quiet: bool = False) -> None:
        self.calls += 1
        if self.behaviour == "403":
            raise ApiException(403)
        archive = Path(path) / f"{competition}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(get_testdata_file("693_UNCR.dcm"), "stage_2_train/ID_0000000a1.dcm")
            zf.write(get_testdata_file("693_UNCR.dcm"), "stage_2_test/ID_0000000b1.dcm")
            rows = [f"ID_0000000a1_{s},{int(s in ('subdural', 'any'))}" for s in rsna.SUBTYPES]
            zf.writestr("stage_2_train.csv", "ID,Label\n" + "\n".join(rows) + "\n")
        if self.behaviour == "partial":
            archive.write_bytes(archive.read_bytes()[:-200])


@pytest.fixture()
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture()
def credentials(monkeypatch: pytest.MonkeyPatch, no_credentials: None) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)


def use(monkeypatch: pytest.MonkeyPatch, api: FakeApi) -> FakeApi:
    monkeypatch.setattr(kaggle, "_client", lambda: api)
    return api


def test_missing_credentials_fail_before_importing_the_client(tmp_path: Path, no_credentials: None) -> None:
    with pytest.raises(FedmlpError, match="Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json"):
        kaggle.download(tmp_path / "raw", IchConfig())
    assert "kaggle" not in sys.modules  # importing it would authenticate and exit


def test_credentials_file_is_found(tmp_path: Path, no_credentials: None) -> None:
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text('{"username": "someone", "key": "x"}')
    assert kaggle.credentials_available()


def test_rules_not_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, credentials: None,
                            caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    use(monkeypatch, FakeApi("403"))
    code = main(["download", "ich", "--out", str(tmp_path / "raw"), "--done", str(tmp_path / "raw/download.done")])
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 403" in err and "competitions/rsna-intracranial-hemorrhage-detection/rules" in err
    assert SECRET not in err + caplog.text
    assert not (tmp_path / "raw/download.done").exists()


def test_partial_download_is_detected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, credentials: None) -> None:
    use(monkeypatch, FakeApi("partial"))
    with pytest.raises(FedmlpError, match="incomplete download .* moved aside"):
        kaggle.download(tmp_path / "raw", IchConfig())
    assert not (tmp_path / "raw" / rsna.LABEL_FILE).exists()
    assert (tmp_path / "raw/rsna-intracranial-hemorrhage-detection.zip.partial").exists()


def test_success_extracts_the_training_part_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, credentials: None,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api = use(monkeypatch, FakeApi("ok"))
    raw = tmp_path / "raw"
    assert main(["download", "ich", "--out", str(raw), "--done", str(raw / "download.done")]) == 0
    assert (raw / "stage_2_train/ID_0000000a1.dcm").exists() and (raw / rsna.LABEL_FILE).exists()
    assert not (raw / "stage_2_test").exists() and not (raw / "rsna-intracranial-hemorrhage-detection.zip").exists()
    kaggle.download(raw, IchConfig())
    assert api.calls == 1, "a finished download is not repeated"
    assert SECRET not in caplog.text
    ingest_ich(raw, tmp_path / "store", PreprocessConfig(size=32), "ich")
    store = ImageStore.open(tmp_path / "store")
    assert store.image_ids == ["ID_0000000a1"] and store.labels[0].tolist() == [0, 0, 0, 0, 1]
