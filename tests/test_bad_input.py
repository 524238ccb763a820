"""Bad and hostile input through the real ``fedmlp`` command: one line naming the file or key, exit
status 2, the bad item skipped and listed where the policy says so, and no partial output.
docs/errors.md lists every case and the tests that hold it (some live in older test files)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
import torchvision
from conftest import bin_dir
from httpserver import Files, serve
from PIL import Image
from pydicom.data import get_testdata_file

from fedmlp import checkpoint
from fedmlp.archives import extract_tar, extract_zip
from fedmlp.cli import main
from fedmlp.config import ModelConfig, to_dict
from fedmlp.download import fetch, is_complete
from fedmlp.errors import FedmlpError, one_line, printable
from fedmlp.models import build_model
from fedmlp.sources import nih, rsna
from fedmlp.store import ImageStore

HEAD_CT = Path(get_testdata_file("693_UNCR.dcm"))


def fedmlp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDMLP_PROGRESS": "0"}
    return subprocess.run([f"{bin_dir()}/fedmlp", "--log-level", "ERROR", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def one_error_line(result: subprocess.CompletedProcess | str) -> str:
    """The stderr of a failed command: exactly one line, the error."""
    err = result if isinstance(result, str) else result.stderr
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    """Temporary files or directories an interrupted or failed write left behind."""
    return sorted(p.name for p in directory.rglob("*.tmp"))


def label_rows(ids: list[str]) -> list[str]:
    return [f"{i}_{s},{int(s == 'subdural' and n % 2 == 0)}" for n, i in enumerate(ids) for s in rsna.SUBTYPES]


# --- DICOM ------------------------------------------------------------------------------------------

def _modified(source: Path, target: Path, change) -> None:
    ds = pydicom.dcmread(source)
    change(ds)
    ds.save_as(target)


def _constant(ds: pydicom.Dataset) -> None:
    ds.PixelData = np.full((ds.Rows, ds.Columns), 1024, dtype=np.int16).tobytes()


def _no_rescale(ds: pydicom.Dataset) -> None:
    del ds.RescaleSlope, ds.RescaleIntercept


BAD_DICOMS = {  # image ID → (how the file is made, what the reason must say)
    "ID_00000bad1": ("truncated", "unreadable pixel data"),
    "ID_00000bad2": ("not a DICOM", "not a DICOM file"),
    "ID_00000bad3": ("JPEG-LS without a decoder", "compressed (JPEG-LS Lossless Image Compression) and no installed decoder"),
    "ID_00000bad4": ("MR slice", "Modality 'MR', expected CT"),
    "ID_00000bad5": ("RGB", "PhotometricInterpretation 'RGB' is not grayscale"),
    "ID_00000bad6": ("no rescale tags", "CT without RescaleSlope/RescaleIntercept"),
    "ID_00000bad7": ("no window tags", "no WindowCenter/WindowWidth"),
    "ID_00000bad8": ("constant", "constant image (every pixel is 0 HU)"),
    "ID_00000bad9": ("no label rows", "no rows in the label file"),
}
GOOD_DICOMS = ["ID_000000a01", "ID_000000a02"]


@pytest.fixture(scope="module")
def damaged_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kaggle layout: two real head CTs, and one damaged or unsuitable real DICOM per case."""
    root = tmp_path_factory.mktemp("damaged")
    images = root / rsna.IMAGE_DIR
    images.mkdir()
    for image_id in GOOD_DICOMS:
        os.link(HEAD_CT, images / f"{image_id}.dcm")
    path = {image_id: images / f"{image_id}.dcm" for image_id in BAD_DICOMS}
    path["ID_00000bad1"].write_bytes(HEAD_CT.read_bytes()[:-5000])
    path["ID_00000bad2"].write_bytes(b"PNG? no: this is a text file that ended up among the DICOMs\n")
    os.link(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), path["ID_00000bad3"])
    os.link(get_testdata_file("MR_small.dcm"), path["ID_00000bad4"])
    os.link(get_testdata_file("SC_rgb.dcm"), path["ID_00000bad5"])
    _modified(HEAD_CT, path["ID_00000bad6"], _no_rescale)
    os.link(get_testdata_file("CT_small.dcm"), path["ID_00000bad7"])
    _modified(HEAD_CT, path["ID_00000bad8"], _constant)
    os.link(HEAD_CT, path["ID_00000bad9"])
    labelled = [i for i in [*GOOD_DICOMS, *BAD_DICOMS] if i != "ID_00000bad9"] + ["ID_0000nofile"]
    (root / rsna.LABEL_FILE).write_text("\n".join(["ID,Label", *label_rows(labelled)]) + "\n")
    return root


@pytest.fixture(scope="module")
def lenient_ingest(damaged_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("lenient") / "store"
    settings = json.dumps({"windowing": "header", "size": 32, "max_skipped_fraction": 0.9})
    return fedmlp("ingest", "--dataset", "ich", "--raw", str(damaged_raw), "--out", str(out), "--settings", settings), out


@pytest.mark.parametrize("image_id", list(BAD_DICOMS), ids=[case for case, _ in BAD_DICOMS.values()])
def test_bad_dicom_is_skipped_and_reported(lenient_ingest: tuple[subprocess.CompletedProcess, Path], image_id: str) -> None:
    result, out = lenient_ingest
    assert result.returncode == 0, result.stderr
    report = pd.read_csv(out.with_name("store.skipped.csv")).set_index("image_id")["reason"]
    assert BAD_DICOMS[image_id][1] in report[image_id]
    assert f"{image_id}.dcm" in report[image_id]  # the file is named
    assert "\n" not in report[image_id]
    manifest = ImageStore.open(out).manifest
    assert image_id in {entry["image_id"] for entry in manifest["skipped"]}


def test_good_dicoms_are_kept_and_labels_without_image_reported(lenient_ingest: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, out = lenient_ingest
    store = ImageStore.open(out)
    assert store.image_ids == GOOD_DICOMS and store.images.shape == (2, 1, 32, 32)
    report = pd.read_csv(out.with_name("store.skipped.csv")).set_index("image_id")["reason"]
    assert "ID_0000nofile" in report and "no file in" in report["ID_0000nofile"]
    assert len(report) == len(BAD_DICOMS) + 1


def test_too_many_bad_files_fail_the_stage(damaged_raw: Path, tmp_path: Path) -> None:
    report = tmp_path / "logs" / "skipped.csv"
    result = fedmlp("ingest", "--dataset", "ich", "--raw", str(damaged_raw), "--out", str(tmp_path / "store"),
                    "--report", str(report), "--settings", '{"size": 32}')
    assert result.returncode == 2
    line = one_error_line(result)
    assert "9 of 11 image files (81.8%) cannot be used" in line
    assert "config key 'preprocess.max_skipped_fraction' allows (0.05)" in line and str(report) in line
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []
    assert len(pd.read_csv(report)) == len(BAD_DICOMS) + 1, "the report survives the failure"


# --- label files ------------------------------------------------------------------------------------

def _rsna_raw(root: Path, labels: str) -> Path:
    (root / rsna.IMAGE_DIR).mkdir(parents=True)
    for image_id in ("ID_000000a01", "ID_000000a02"):
        os.link(HEAD_CT, root / rsna.IMAGE_DIR / f"{image_id}.dcm")
    (root / rsna.LABEL_FILE).write_text(labels)
    return root


GOOD_RSNA = ["ID,Label", *label_rows(["ID_000000a01", "ID_000000a02"])]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("", r"stage_2_train.csv: empty file"),
        ("ID,Label\n", r"stage_2_train.csv: no label rows after the header"),
        ("\n".join(["ID,Lable", *GOOD_RSNA[1:]]), r"stage_2_train.csv:1: missing column\(s\) Label; expected header 'ID,Label', found 'ID,Lable'"),
        ("\n".join([*GOOD_RSNA[:4], "ID_000000a01_intraventricular,yes", *GOOD_RSNA[5:]]), r"stage_2_train.csv:5: label 'yes' is not 0 or 1"),
        ("\n".join([*GOOD_RSNA[:4], "ID_000000a01_intraventricular,2", *GOOD_RSNA[5:]]), r"stage_2_train.csv:5: label '2' is not 0 or 1"),
        ("\n".join([*GOOD_RSNA, "ID_000000a01_epidural,1"]), r"stage_2_train.csv:2, 14: duplicate rows for ID_000000a01_epidural disagree on the label \(0 vs 1\)"),
        ("\n".join([*GOOD_RSNA, "ID_000000a01_hematoma,1"]), r"stage_2_train.csv:14: unknown subtype 'hematoma'"),
        ("\n".join([GOOD_RSNA[0], *GOOD_RSNA[2:]]), r"stage_2_train.csv:\d+: image ID_000000a01 has no row for subtype\(s\) epidural"),
        ("\n".join(row for row in GOOD_RSNA if not row.split(",")[0].endswith("_subdural")),
         r"stage_2_train.csv: no row for subtype\(s\) subdural in the whole file"),
    ],
    ids=["empty", "header only", "renamed column", "word label", "label 2", "disagreeing duplicates", "unknown subtype", "missing row",
         "a subtype missing everywhere"],
)
def test_bad_rsna_label_file(tmp_path: Path, labels: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _rsna_raw(tmp_path / "raw", labels)
    code = main(["ingest", "--dataset", "ich", "--raw", str(raw), "--out", str(tmp_path / "store")])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("fedmlp ingest: error: ") and str(raw / rsna.LABEL_FILE) in line
    assert re.search(message, line), line
    assert not (tmp_path / "store").exists()


EVIL_ID = "ID_\x1b[31mred\x1b[0m\x07"  # colours the terminal red, then rings its bell
EVIL_SHOWN = "ID_\\x1b[31mred\\x1b[0m\\x07"


def test_control_characters_of_a_label_id_are_escaped_in_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _rsna_raw(tmp_path / "raw", "\n".join([*GOOD_RSNA, *(f"{EVIL_ID}_{s},0" for s in rsna.SUBTYPES[:-1])]))
    assert main(["ingest", "--dataset", "ich", "--raw", str(raw), "--out", str(tmp_path / "store")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"image {EVIL_SHOWN} has no row for subtype(s) any" in line, line
    assert "\x1b" not in line and "\x07" not in line


def test_control_characters_of_a_label_id_are_escaped_in_the_log(tmp_path: Path) -> None:
    """A labelled image without a file is a warning naming the first one: escaped too (every log message is)."""
    raw = _rsna_raw(tmp_path / "raw", "\n".join([*GOOD_RSNA, *(f"{EVIL_ID}_{s},0" for s in rsna.SUBTYPES)]))
    result = subprocess.run([f"{bin_dir()}/fedmlp", "--log-level", "WARNING", "ingest", "--dataset", "ich", "--raw", str(raw),
                             "--out", str(tmp_path / "store")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "FEDMLP_PROGRESS": "0"})
    assert result.returncode == 0, result.stderr
    assert f"1 labelled images have no file in {raw / rsna.IMAGE_DIR} (first: {EVIL_SHOWN})" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_printable_escapes_control_characters_only() -> None:
    assert printable("a\x1b[2Jb\nc\td\x7f\x9b\u202eé ü") == "a\\x1b[2Jb\\nc\\td\\x7f\\x9b\\u202eé ü"
    assert one_line("first\nsecond \x1b[0m") == "first second \\x1b[0m"


NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"


def _nih_row(name: str, findings: str, view: str = "PA") -> str:
    return f"{name},{findings},0,1,50,M,{view},64,64,0.1,0.1"


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)  # uint16 arrays become 16-bit PNGs, (H, W, 4) arrays RGBA


def _nih_raw(root: Path, rows: list[str]) -> Path:
    images = root / nih.IMAGE_DIR
    images.mkdir(parents=True)
    gradient = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    for name in ("a.png", "b.png", "c.png"):
        _png(images / name, gradient)
    (root / nih.LABEL_FILE).write_text("\n".join([NIH_HEADER, *rows]) + "\n")
    return root


GOOD_NIH = [_nih_row("a.png", "Mass"), _nih_row("b.png", "No Finding"), _nih_row("c.png", "Effusion|Mass")]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (None, None, r"Data_Entry_2017_v2020.csv: empty file"),
        (NIH_HEADER, [], r"Data_Entry_2017_v2020.csv: no rows after the header"),
        (NIH_HEADER.replace("Finding Labels", "Findings"), GOOD_NIH, r"Data_Entry_2017_v2020.csv:1: missing column\(s\) Finding Labels"),
        (NIH_HEADER, [_nih_row("z.png", "Mass", "AP"), *GOOD_NIH[:2], _nih_row("c.png", "Mass|Pneumonitis")],
         r"Data_Entry_2017_v2020.csv:5: unknown finding 'Pneumonitis'"),
        (NIH_HEADER, [*GOOD_NIH[:2], _nih_row("c.png", "")], r"Data_Entry_2017_v2020.csv:4: empty 'Finding Labels'"),
        (NIH_HEADER, [*GOOD_NIH, _nih_row("b.png", "Mass")], r"Data_Entry_2017_v2020.csv:5: image 'b.png' is listed again \(first on line 3\)"),
    ],
    ids=["empty", "header only", "renamed column", "unknown finding after an AP row", "empty findings", "duplicate image"],
)
def test_bad_nih_label_file(tmp_path: Path, header: str | None, rows: list[str] | None, message: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    raw = _nih_raw(tmp_path / "raw", [])
    (raw / nih.LABEL_FILE).write_text("" if header is None else "\n".join([header, *rows]) + "\n")
    code = main(["ingest", "--dataset", "chestxray14", "--raw", str(raw), "--out", str(tmp_path / "store"),
                 "--source-settings", json.dumps({"classes": ["Mass", "Effusion"]})])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(message, line), line
    assert not (tmp_path / "store").exists()


# --- PNG images -------------------------------------------------------------------------------------

def test_png_problems_are_skipped_and_listed_odd_modes_converted(tmp_path: Path) -> None:
    rows = [_nih_row(n, "Mass" if i % 2 else "No Finding") for i, n in enumerate(["a.png", "rgba.png", "deep.png", "cut.png", "junk.png", "gone.png"])]
    raw = _nih_raw(tmp_path / "raw", rows)
    images = raw / nih.IMAGE_DIR
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0] = rgba[..., 1] = rgba[..., 2] = 200
    rgba[..., 3] = 255
    _png(images / "rgba.png", rgba)
    _png(images / "deep.png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, format="PNG")
    (images / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (images / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    settings = json.dumps({"size": 32, "max_skipped_fraction": 0.6})
    result = fedmlp("ingest", "--dataset", "chestxray14", "--raw", str(raw), "--out", str(tmp_path / "store"),
                    "--settings", settings, "--source-settings", json.dumps({"classes": ["Mass"]}))
    assert result.returncode == 0, result.stderr
    store = ImageStore.open(tmp_path / "store")
    assert sorted(store.image_ids) == ["a.png", "deep.png", "rgba.png"]
    rgba_row, deep_row = store.rows(["rgba.png", "deep.png"])
    assert store.images[rgba_row].min() == 200 and store.images[deep_row].max() > 200  # grayscale; 16 bits scaled to 8
    report = pd.read_csv(tmp_path / "store.skipped.csv").set_index("image_id")["reason"]
    assert "unreadable image" in report["cut.png"] and "cut.png" in report["cut.png"]
    assert "unreadable image" in report["junk.png"]
    assert "listed in" in report["gone.png"] and "no file in" in report["gone.png"]
    assert "no row in" in report["b.png"] and "no row in" in report["c.png"]  # images without labels


# --- archives and downloads -------------------------------------------------------------------------

def test_zip_links_and_absolute_paths_are_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr("stage_2_train.csv", "ID,Label\n")
        link = zipfile.ZipInfo("stage_2_train/ID_000000a01.dcm")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(FedmlpError, match=r"link.zip: refusing member 'stage_2_train/ID_000000a01.dcm': links are not extracted"):
        extract_zip(tmp_path / "link.zip", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "abs.zip", "w") as zf:
        zf.writestr("/tmp/evil.csv", "x")
    with pytest.raises(FedmlpError, match=r"abs.zip: refusing member '/tmp/evil.csv'.*outside the target"):
        extract_zip(tmp_path / "abs.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_link_escaping_through_a_directory_symlink_is_refused(tmp_path: Path) -> None:
    """A symlinked directory followed by a member under it is the classic two-step escape."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("images")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "elsewhere")
        tar.addfile(link)
        member = tarfile.TarInfo("images/a.png")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"png"))
    (tmp_path / "images_001.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(FedmlpError, match="images_001.tar.gz: refusing member 'images': links are not extracted"):
        extract_tar(tmp_path / "images_001.tar.gz", tmp_path / "out")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "out").exists()


def test_bad_checksum_is_not_trusted_by_a_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a wrong MD5 the file is kept aside; the next run fetches again and never uses the bad copy."""
    monkeypatch.setattr("fedmlp.download.time.sleep", lambda seconds: None)
    good, bad = b"good archive bytes" * 1000, b"tampered archive bytes" * 1000
    md5 = hashlib.md5(good).hexdigest()
    with serve(Files({"/a.tar.gz": bad})) as url, pytest.raises(FedmlpError, match="a.tar.gz: MD5 .* moved aside"):
        fetch(f"{url}/a.tar.gz", tmp_path / "a.tar.gz", md5)
    assert not (tmp_path / "a.tar.gz").exists() and not is_complete(tmp_path / "a.tar.gz", md5)
    files = Files({"/a.tar.gz": good})
    with serve(files) as url:
        fetch(f"{url}/a.tar.gz", tmp_path / "a.tar.gz", md5)
    assert (tmp_path / "a.tar.gz").read_bytes() == good and files.requests == [("/a.tar.gz", None)]
    assert (tmp_path / "a.tar.gz.bad-md5").read_bytes() == bad


# --- checkpoints ------------------------------------------------------------------------------------

@pytest.fixture()
def eval_inputs(store: ImageStore, federation: dict, tmp_path: Path) -> list[str]:
    (tmp_path / "partition.json").write_text(json.dumps(federation))
    (tmp_path / "rounds.csv").write_text("round,test_mAP,test_AUROC,val_mAP,val_AUROC\n1,0.5,0.5,,\n")
    return ["--store", str(store.root), "--partition", str(tmp_path / "partition.json"), "--rounds", str(tmp_path / "rounds.csv"),
            "--device", "cpu", "--out-metrics", str(tmp_path / "out" / "metrics.json"), "--out-predictions", str(tmp_path / "out" / "predictions.csv")]


TINY = ModelConfig(width=4)


def _write_checkpoint(path: Path, classes: list[str], model_config: ModelConfig = TINY, **changes) -> None:
    model = build_model(model_config, len(classes))
    payload = {"format": 1, "state_dict": model.state_dict(), "meta": {"model": to_dict(model_config), "classes": classes}}
    payload.update(changes)
    torch.save(payload, path)


class RunsCode:
    """A pickle that runs code when loaded (touches a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_code_is_refused_and_never_run(store: ImageStore, tmp_path: Path, eval_inputs: list[str]) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"format": 1, "state_dict": {}, "meta": RunsCode(marker)}, tmp_path / "evil.pt")
    result = fedmlp("evaluate", "--model", str(tmp_path / "evil.pt"), *eval_inputs)
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{tmp_path / 'evil.pt'}: not loadable safely: it holds pickled objects other than tensors" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, c: _write_checkpoint(p, c[:3]), "trained for classes"),
        (lambda p, c: _write_checkpoint(p, c, meta={"model": to_dict(ModelConfig(width=8)), "classes": c}), "weights do not fit the architecture"),
        (lambda p, c: _write_checkpoint(p, c, meta={"model": {**to_dict(TINY), "arch": "vgg"}, "classes": c}), "describes a model this version cannot build"),
        (lambda p, c: _write_checkpoint(p, c, meta={"classes": c}), "no model description"),
        (lambda p, c: torch.save(torchvision.models.resnet18().state_dict(), p), "not a fedmlp checkpoint (format 1 expected)"),
        (lambda p, c: (_write_checkpoint(p, c), p.write_bytes(p.read_bytes()[:5000])), "not a fedmlp checkpoint, or truncated or corrupt"),
        (lambda p, c: p.write_bytes(b""), "empty file (0 bytes), not a fedmlp checkpoint"),
    ],
    ids=["wrong class count", "wrong architecture", "unknown architecture", "tampered metadata", "foreign state dict", "truncated",
         "empty"],
)
def test_foreign_or_tampered_checkpoint(store: ImageStore, tmp_path: Path, eval_inputs: list[str], make, message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt"
    make(path, store.classes)
    assert main(["evaluate", "--model", str(path), *eval_inputs]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{path}: " in line and message in line, line
    assert not (tmp_path / "out").exists()


def test_a_class_without_test_positives_is_named_and_left_out_of_the_means(
        store: ImageStore, federation: dict, tmp_path: Path, eval_inputs: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Exit 0 (the other classes are scored), a warning per class naming it, and metrics.json lists the
    class as undefined (the report shows that list), with finite means over the other classes."""
    name = store.classes[0]
    test = [i for i, row in zip(federation["test"], store.labels[store.rows(federation["test"])]) if row[0] == 0]
    (tmp_path / "partition.json").write_text(json.dumps({**federation, "test": test}))
    _write_checkpoint(tmp_path / "model.pt", store.classes)
    with caplog.at_level("WARNING", logger="fedmlp"):
        assert main(["evaluate", "--model", str(tmp_path / "model.pt"), *eval_inputs]) == 0
    assert (f"class {name} has no positive in the test set ({len(test)} images): its AP, AUROC and BACC are undefined "
            "and left out of the mean") in caplog.messages
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert name in metrics["undefined_classes"] and metrics["per_class"][name]["AP"] is None
    assert len(metrics["undefined_classes"]) < len(store.classes) and np.isfinite(metrics["overall"]["mAP"])


def test_checkpoint_load_names_the_file() -> None:
    with pytest.raises(FedmlpError, match="nowhere.pt: checkpoint not found"):
        checkpoint.load(Path("/nonexistent/nowhere.pt"))


# --- secrets ----------------------------------------------------------------------------------------

def test_kaggle_key_never_written_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A failed authentication whose message echoes the key, then a good download and ingest: the key
    is in no output, log, report, manifest or file under the DVC-tracked directories."""
    from test_kaggle import SECRET, FakeApi

    from fedmlp.sources import kaggle

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    caplog.set_level("DEBUG")

    def refuse() -> None:
        raise SystemExit(f"401 - Unauthenticated: key {SECRET} is not valid")

    raw = tmp_path / "resources" / "ich" / "raw"
    monkeypatch.setattr(kaggle, "_client", refuse)
    assert main(["download", "ich", "--out", str(raw), "--done", str(raw / "download.done")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Kaggle authentication failed (SystemExit)" in line and SECRET not in line

    monkeypatch.setattr(kaggle, "_client", lambda: FakeApi("ok"))
    assert main(["download", "ich", "--out", str(raw), "--done", str(raw / "download.done")]) == 0
    assert main(["ingest", "--dataset", "ich", "--raw", str(raw), "--out", str(tmp_path / "resources" / "ich" / "store" / "header32"),
                 "--settings", '{"size": 32}']) == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "home" not in p.parts]
    assert any(p.name == "manifest.json" for p in written) and any(p.name.endswith(".skipped.csv") for p in written)
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]
    assert SECRET not in capsys.readouterr().err + caplog.text


def _edit_manifest(root: Path, **changes) -> None:
    path = root / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _unrecorded(root: Path, change) -> None:
    """Make ``change`` and drop the checksums from the manifest, to reach the checks behind them."""
    change()
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["sha256"]
    (root / "manifest.json").write_text(json.dumps(manifest))


def _edit_labels(root: Path, row: int, text: str, column: str = "epidural", value_of_row: int | None = None) -> None:
    table = pd.read_csv(root / "labels.csv", dtype=str)
    table.loc[row, column] = table.loc[value_of_row, column] if value_of_row is not None else text
    table.to_csv(root / "labels.csv", index=False)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "manifest.json").write_text("{not json"), r"manifest\.json: not a store manifest \(JSONDecodeError"),
        (lambda root: (root / "manifest.json").write_text("{}"), r"manifest\.json: not a store manifest \(KeyError"),
        (lambda root: (root / "images.npy").unlink(), r"images\.npy: missing; is .* an image store"),
        (lambda root: (root / "labels.csv").write_text("image_id,x\na,1\n"), r"labels\.csv: SHA-256 differs from the one manifest\.json records"),
        (lambda root: _unrecorded(root, lambda: (root / "labels.csv").write_text("image_id,x\na,1\n")), r"labels\.csv: does not match manifest\.json"),
        (lambda root: np.save(root / "images.npy", np.load(root / "images.npy").astype(np.float32)), r"images\.npy: holds float32 values, expected uint8"),
        (lambda root: np.save(root / "images.npy", np.load(root / "images.npy")[:, :, :16]), r"images\.npy: shape \(80, 1, 16, 32\) does not match manifest\.json \(80 × 1 × 32 × 32\)"),
        (lambda root: np.save(root / "images.npy", np.load(root / "images.npy")[:70]), r"images\.npy: shape \(70, 1, 32, 32\) does not match"),
        (lambda root: _unrecorded(root, lambda: _edit_labels(root, 3, "nan")), r"labels\.csv: line 5: label 'nan' for epidural is not 0 or 1"),
        (lambda root: _unrecorded(root, lambda: _edit_labels(root, 0, "2")), r"labels\.csv: line 2: label '2' for epidural is not 0 or 1"),
        (lambda root: _unrecorded(root, lambda: _edit_labels(root, 1, "1", column="image_id", value_of_row=0)), r"labels\.csv: line 3: image ID .* listed twice"),
        (lambda root: _edit_manifest(root, n_images=-3), r"manifest\.json: not a store manifest \(n_images, channels, size"),
        (lambda root: _edit_manifest(root, classes=["a", "a"]), r"manifest\.json: not a store manifest \(classes"),
        (lambda root: (root / "labels.csv").unlink() or (root / "labels.csv").mkdir(), r"labels\.csv: not a regular file"),
    ],
    ids=["manifest-not-json", "manifest-without-classes", "images-missing", "labels-edited", "labels-out-of-step", "images-float32",
         "images-wrong-size", "images-fewer-rows", "label-nan", "label-2", "duplicate-id", "negative-count", "duplicate-class",
         "labels-a-directory"],
)
def test_damaged_store_is_named(store, damage, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command that opens a store (here `fedmlp bench --store`) names the damaged file."""
    root = tmp_path / "store"
    root.mkdir()
    for path in store.root.iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    damage(root)
    code = main(["--log-level", "ERROR", "bench", "--stage", "loader", "--store", str(root), "--images", "16", "--batch-size", "8"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("fedmlp bench: error: ") and re.search(message, line), line
