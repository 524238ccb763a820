"""A seeded synthetic head-CT source that writes exactly the RSNA ICH layout (docs/data.md).

Each slice is an axial head phantom in Hounsfield units (air, skull, a thin CSF rim with sulci,
brain with smooth grey/white texture, two lateral ventricles, the interhemispheric fissure, noise and
a little blur) with hemorrhages of the five subtypes drawn where they occur:

- epidural: a short, thick biconvex lens against the inner skull;
- subdural: a long, thin crescent along the inner skull;
- intraparenchymal: an irregular blob with an oedema rim inside the brain;
- intraventricular: blood layering in the dependent part of a lateral ventricle;
- subarachnoid: blood filling the CSF rim, sulci and fissure over a sector.

The files carry real-data quirks: most are int16 with intercept -1024, a configurable share are the
RSNA "signed stored as unsigned" kind (BitsStored 12, PixelRepresentation 0, intercept 0) and some
have multi-valued WindowCenter/WindowWidth. Everything is a pure function of the config and seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pydicom
import pydicom.config
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import integrate, optimize, stats
from scipy.ndimage import gaussian_filter

from fedmlp.atomic import atomic_dir, exclusive, require_free_space
from fedmlp.config import SEED_MAX
from fedmlp.errors import FedmlpError
from fedmlp.progress import bar
from fedmlp.schema import setting
from fedmlp.seeding import numpy_rng
from fedmlp.sources import rsna
from fedmlp.sources.registry import Source

log = logging.getLogger(__name__)

PRESET_HELP = (
    "Named values for prevalence and cooccurrence (docs/data.md): rsna-slices is the slice-level rate of each subtype in Kaggle's "
    "RSNA ICH stage_2_train (epidural 0.42 %, intraparenchymal 4.80 %, intraventricular 3.48 %, subarachnoid 4.74 %, subdural 6.27 %) "
    "with a common loading 0.69 on the latent bleed, which reproduces its 14.3 % any-hemorrhage rate. Absent: none. With a preset, "
    "prevalence and cooccurrence must be null (one line naming the key otherwise); a --configfile over config/config.yaml has to null them."
)
COOCCURRENCE_HELP = (
    "A number: subtypes drawn independently, then an image with a hemorrhage gets one more subtype with this probability. A mapping "
    "subtype -> loading in [0, 1): a latent bleed shared by all subtypes (one-factor Gaussian copula), the realised prevalence stays the "
    "requested one and subtypes j, k co-occur more often as loading_j x loading_k (their latent correlation) grows; a subtype left out "
    "has 0, independent of the rest. null only with a preset."
)


def _per_subtype(**number: Any) -> dict[str, Any]:
    """A mapping with one number per subtype (rsna.CLASSES), each with these bounds (and default)."""
    return {"type": "object", "additionalProperties": False,
            "properties": {c: {"type": "number", **number} for c in rsna.CLASSES}}


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic head CT of dataset synthetic-ich (docs/data.md): its size, seed, label model and file quirks."""

    n_images: int = setting(2000, "Number of DICOM slices.", minimum=10, maximum=1_000_000)
    image_size: int = setting(128, "Rows and columns of each slice.", minimum=32, maximum=1024)
    seed: int = setting(2024, minimum=0, maximum=SEED_MAX)
    preset: Literal["rsna-slices"] | None = setting(None, PRESET_HELP, schema={"type": "string", "enum": ["rsna-slices"]},
                                                    schema_default=False)
    prevalence: dict[str, float] | None = setting(
        dict.fromkeys(rsna.CLASSES, 0.2), "Probability that each subtype is present in an image. null only with a preset, which supplies it.",
        schema={**_per_subtype(minimum=0, maximum=1, default=0.2), "type": ["object", "null"]}, minimum=0, maximum=1,
    )
    cooccurrence: float | dict[str, float] | None = setting(
        0.3, COOCCURRENCE_HELP, minimum=0, maximum=1,
        schema={"oneOf": [{"type": "number", "minimum": 0, "maximum": 1}, _per_subtype(minimum=0, exclusiveMaximum=1), {"type": "null"}]},
    )
    enrichment: float | None = setting(
        None, "Absent or null: none. A number in (0, 1): scale every subtype's prevalence by one common factor, keeping their ratios and "
        "the cooccurrence, so that the share of images with any hemorrhage is this (the real 0.42 % epidural leaves a small data set "
        "almost without positives; docs/data.md).", schema_default=False, exclusiveMinimum=0, exclusiveMaximum=1,
    )
    signed_as_unsigned_fraction: float = setting(0.1, "Share of files stored in the RSNA signed-as-unsigned form.", minimum=0, maximum=1)
    multivalued_window_fraction: float = setting(0.2, "Share of files with multi-valued WindowCenter/WindowWidth.", minimum=0, maximum=1)
    duplicated_images: int = setting(2, "Images whose label rows appear twice in the CSV (the real file has 4).", minimum=0, maximum=1_000_000)


SOURCE = Source(
    "synthetic-ich", "generated", "generated head CT in the RSNA ICH layout (the synthetic section)", "synthetic", SyntheticConfig,
    classes=lambda config: list(rsna.CLASSES), ingest=rsna.ingest_as("synthetic-ich"), layout=(rsna.LABEL_FILE, rsna.IMAGE_DIR),
)

AIR, BONE, CSF, BRAIN = -1000.0, 1200.0, 8.0, 33.0
HEADER_WINDOWS = ((40, 80), (40, 80), (40, 80), (35, 80), (40, 90), (45, 100))


@dataclass(frozen=True)
class Head:
    """Geometry of one phantom, in normalised image coordinates (the image spans [-1, 1])."""

    x: np.ndarray  # head-frame coordinates of every pixel
    y: np.ndarray
    r: np.ndarray  # elliptical radius: 1 at the inner skull table
    theta: np.ndarray  # elliptical angle
    brain: np.ndarray  # mask inside the inner skull table
    rim: np.ndarray  # CSF between brain surface and skull
    ventricles: list[np.ndarray]
    fissure: np.ndarray
    sulci: np.ndarray


def _angle_diff(a: np.ndarray, b: float) -> np.ndarray:
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def draw_head(size: int, rng: np.random.Generator) -> tuple[np.ndarray, Head]:
    grid = (np.arange(size) + 0.5) / size * 2 - 1
    gx, gy = np.meshgrid(grid, grid)
    cx, cy = rng.normal(0, 0.03, 2)
    phi = np.deg2rad(rng.uniform(-12, 12))
    x = np.cos(phi) * (gx - cx) + np.sin(phi) * (gy - cy)
    y = -np.sin(phi) * (gx - cx) + np.cos(phi) * (gy - cy)
    a, b = rng.uniform(0.66, 0.74), rng.uniform(0.80, 0.88)
    skull = rng.uniform(0.07, 0.09)
    rho = np.hypot(x / a, y / b)
    r = rho / (1 - skull)
    theta = np.arctan2(y / b, x / a)

    hu = np.full((size, size), AIR, dtype=np.float64)
    hu[rho <= 1] = BONE + rng.normal(0, 60)
    brain = r < 1
    texture = gaussian_filter(rng.normal(0, 1, (size, size)), size / 24)
    texture /= texture.std() + 1e-9
    hu[brain] = BRAIN + 4.0 * texture[brain] + 4.0 * (r[brain] < 0.75)  # a little grey/white contrast

    rim = brain & (r > 0.95)
    n_sulci = rng.integers(8, 14)
    sulci = np.zeros_like(brain)
    deepest = 0.22
    # a sulcus lies in the outer band of the brain, at most `deepest` deep: its angles are computed
    # there only, the same values pixel for pixel, at a fraction of the cost for the whole image
    band = np.flatnonzero(brain & (r > 1 - deepest))
    theta_band, r_band = theta.flat[band], r.flat[band]
    for angle in rng.uniform(-np.pi, np.pi, n_sulci):
        depth = rng.uniform(0.12, deepest)
        sulci.flat[band] |= (np.abs(_angle_diff(theta_band, angle)) < 0.035) & (r_band > 1 - depth)
    fissure = brain & (np.abs(x) < 0.015) & (np.abs(y) > 0.25 * b)
    hu[rim | sulci | fissure] = CSF

    ventricles = []
    for side in (-1, 1):
        vx, vy = x - side * 0.12 * a, y - 0.02 * b
        tilt = np.deg2rad(-side * rng.uniform(12, 24))  # frontal horns close, occipital horns apart
        u = np.cos(tilt) * vx + np.sin(tilt) * vy
        v = -np.sin(tilt) * vx + np.cos(tilt) * vy
        mask = np.hypot(u / rng.uniform(0.05, 0.07), v / rng.uniform(0.18, 0.24)) < 1
        hu[mask] = CSF - 3
        ventricles.append(mask)
    return hu, Head(x, y, r, theta, brain, rim, ventricles, fissure, sulci)


def epidural(hu: np.ndarray, head: Head, rng: np.random.Generator) -> None:
    center, half_span = rng.uniform(-np.pi, np.pi), rng.uniform(0.25, 0.45)
    thickness = rng.uniform(0.12, 0.2)
    t = _angle_diff(head.theta, center) / half_span
    lens = head.brain & (np.abs(t) < 1) & (1 - head.r < thickness * (1 - t**2))
    hu[lens] = rng.uniform(60, 80)


def subdural(hu: np.ndarray, head: Head, rng: np.random.Generator) -> None:
    center, half_span = rng.uniform(-np.pi, np.pi), rng.uniform(0.7, 1.2)
    thickness = rng.uniform(0.05, 0.09)
    t = _angle_diff(head.theta, center) / half_span
    crescent = head.brain & (np.abs(t) < 1) & (1 - head.r < thickness * np.sqrt(np.clip(1 - t**4, 0, 1)))
    hu[crescent] = rng.uniform(55, 75)


def intraparenchymal(hu: np.ndarray, head: Head, rng: np.random.Generator) -> None:
    angle, radius = rng.uniform(-np.pi, np.pi), rng.uniform(0.35, 0.65)
    cx, cy = radius * np.cos(angle) * 0.65, radius * np.sin(angle) * 0.8
    dx, dy = head.x - cx, head.y - cy
    phase = np.arctan2(dy, dx)
    size = rng.uniform(0.06, 0.12)
    wobble = 1 + 0.15 * np.sin(2 * phase + rng.uniform(0, 6.3)) + 0.1 * np.sin(3 * phase + rng.uniform(0, 6.3))
    distance = np.hypot(dx, dy) / (size * wobble)
    hu[head.brain & (distance < 1.35) & (distance >= 1)] = rng.uniform(15, 22)  # oedema
    hu[head.brain & (distance < 1)] = rng.uniform(60, 85)


def intraventricular(hu: np.ndarray, head: Head, rng: np.random.Generator) -> None:
    sides = [0, 1] if rng.random() < 0.5 else [int(rng.integers(2))]
    for side in sides:
        ventricle = head.ventricles[side]
        ys = head.y[ventricle]
        level = np.quantile(ys, 1 - rng.uniform(0.35, 0.75))  # posterior (dependent) part fills first
        hu[ventricle & (head.y >= level)] = rng.uniform(55, 75)


def subarachnoid(hu: np.ndarray, head: Head, rng: np.random.Generator) -> None:
    center, half_span = rng.uniform(-np.pi, np.pi), rng.uniform(0.6, 1.4)
    sector = np.abs(_angle_diff(head.theta, center)) < half_span
    spaces = (head.rim | head.sulci) & sector
    if rng.random() < 0.5:
        spaces |= head.fissure
    hu[spaces] = rng.uniform(50, 70)


DRAW = {
    "epidural": epidural,
    "intraparenchymal": intraparenchymal,
    "intraventricular": intraventricular,
    "subarachnoid": subarachnoid,
    "subdural": subdural,
}


# Slice-level counts of Kaggle's RSNA ICH stage_2_train.csv (752,803 slices; Flanders et al. 2020):
# any 107,933 (14.34 %). The common loading 0.69 on the latent bleed is the one that reproduces that
# any-hemorrhage rate from the five marginals (tests/test_synthetic.py checks it; docs/data.md).
RSNA_SLICES = 752_803
RSNA_POSITIVE = {"epidural": 3_145, "intraparenchymal": 36_118, "intraventricular": 26_205, "subarachnoid": 35_675, "subdural": 47_166}
RSNA_ANY = 107_933
PRESETS: dict[str, dict[str, dict[str, float]]] = {
    "rsna-slices": {
        "prevalence": {c: n / RSNA_SLICES for c, n in RSNA_POSITIVE.items()},
        "cooccurrence": {c: 0.69 for c in RSNA_POSITIVE},
    },
}


@dataclass(frozen=True)
class LabelModel:
    """What the labels are drawn from, once the preset and the enrichment are resolved."""

    prevalence: np.ndarray  # per class, in rsna.CLASSES order
    cooccurrence: float | np.ndarray  # the extra-subtype probability, or per-class loadings


def _per_class(values: dict[str, float], key: str) -> np.ndarray:
    classes = list(rsna.CLASSES)
    unknown = set(values) - set(classes)
    if unknown:
        raise FedmlpError(f"config key '{key}.{sorted(unknown)[0]}': unknown subtype (allowed: {', '.join(classes)})")
    return np.array([values.get(c, 0.0) for c in classes])


def label_model(config: SyntheticConfig) -> LabelModel:
    """Resolve ``preset``, ``prevalence``, ``cooccurrence`` and ``enrichment`` into one model."""
    prevalence, cooccurrence = config.prevalence, config.cooccurrence
    if config.preset is not None:
        for name, value in (("prevalence", prevalence), ("cooccurrence", cooccurrence)):
            if value is not None:
                raise FedmlpError(f"config key 'synthetic.{name}': set together with synthetic.preset {config.preset!r}, which "
                                  f"supplies it; write {name}: null to use the preset's (a --configfile is merged over "
                                  "config/config.yaml, whose value stays unless nulled), or drop the preset")
        prevalence, cooccurrence = PRESETS[config.preset]["prevalence"], PRESETS[config.preset]["cooccurrence"]
    for name, value in (("prevalence", prevalence), ("cooccurrence", cooccurrence)):
        if value is None:
            raise FedmlpError(f"config key 'synthetic.{name}': null needs a synthetic.preset to supply it")
    p = _per_class(prevalence, "synthetic.prevalence")
    if isinstance(cooccurrence, dict):
        loadings = _per_class(cooccurrence, "synthetic.cooccurrence")
        if (loadings >= 1).any():
            name = rsna.CLASSES[int(np.argmax(loadings >= 1))]
            raise FedmlpError(f"config key 'synthetic.cooccurrence.{name}': a loading must be below 1, got {cooccurrence[name]}")
        model = LabelModel(p, loadings)
    else:
        model = LabelModel(p, float(cooccurrence))
    return model if config.enrichment is None else enrich(model, config.enrichment)


def any_rate(model: LabelModel) -> float:
    """P(at least one subtype). The extra subtype of the scalar model only goes to positive images, so
    there it is 1 - prod(1 - p); with loadings it is one integral over the latent bleed W."""
    if not isinstance(model.cooccurrence, np.ndarray):
        return float(1 - np.prod(1 - model.prevalence))
    threshold, loading = stats.norm.isf(model.prevalence), model.cooccurrence
    noise = np.sqrt(1 - loading**2)

    def none_given(w: float) -> float:
        return float(stats.norm.pdf(w) * np.prod(stats.norm.cdf((threshold - loading * w) / noise)))

    return 1 - integrate.quad(none_given, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12)[0]


def enrich(model: LabelModel, target: float) -> LabelModel:
    """Scale every prevalence by one common factor (their ratios stay) so that the any-hemorrhage rate
    is ``target``; the co-occurrence is kept."""
    if model.prevalence.max() <= 0:
        raise FedmlpError("config key 'synthetic.enrichment': every prevalence is 0, there is nothing to scale")
    top = 1 / model.prevalence.max()  # the largest factor that keeps every prevalence a probability

    def gap(factor: float) -> float:
        return any_rate(LabelModel(np.minimum(factor * model.prevalence, 1), model.cooccurrence)) - target

    factor = optimize.brentq(gap, 0, top, xtol=1e-13, rtol=1e-13)
    return LabelModel(np.minimum(factor * model.prevalence, 1), model.cooccurrence)


def draw_labels(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """The image-by-subtype label matrix (int8) of ``config``, drawn from ``rng``.

    A number for ``cooccurrence``: independent Bernoulli draws by prevalence, then each positive image
    gets one extra subtype with that probability (chosen in proportion to prevalence). A mapping: a
    one-factor Gaussian copula; each image has a latent bleed W ~ N(0, 1) and subtype k is present when
    l_k W + sqrt(1 - l_k^2) E_k (E_k independent N(0, 1)) exceeds the normal quantile that gives
    exactly its prevalence, so two subtypes co-occur more often than by chance as l_j l_k grows."""
    model = label_model(config)
    if isinstance(model.cooccurrence, np.ndarray):
        latent = rng.standard_normal((config.n_images, 1))
        loading = model.cooccurrence
        score = loading * latent + np.sqrt(1 - loading**2) * rng.standard_normal((config.n_images, len(loading)))
        return (score > stats.norm.isf(model.prevalence)).astype(np.int8)
    classes = list(rsna.CLASSES)
    prevalence = model.prevalence
    labels = rng.random((config.n_images, len(classes))) < prevalence
    extra = labels.any(axis=1) & (rng.random(config.n_images) < model.cooccurrence)
    weights = prevalence / prevalence.sum() if prevalence.sum() > 0 else np.full(len(classes), 1 / len(classes))
    for i in np.flatnonzero(extra):
        free = ~labels[i]
        if free.any():
            p = weights * free
            labels[i, rng.choice(len(classes), p=p / p.sum())] = True
    return labels.astype(np.int8)


def render(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One slice in HU (float64) with the hemorrhages flagged in ``labels``."""
    hu, head = draw_head(size, rng)
    for name, present in zip(rsna.CLASSES, labels):
        if present:
            DRAW[name](hu, head, rng)
    hu = gaussian_filter(hu, 0.6)
    hu += rng.normal(0, rng.uniform(3, 6), hu.shape)
    return hu


def dicom_dataset(image_id: str, hu: np.ndarray, index: int, seed: int, rng: np.random.Generator, config: SyntheticConfig) -> pydicom.Dataset:
    sop_uid = generate_uid(entropy_srcs=[str(seed), image_id, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = image_id  # Kaggle's files carry "ID_<hex>" here, which is not a valid UI
    ds.Modality = "CT"
    ds.PatientID = f"ID_{index:08x}"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), image_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), image_id, "series"])
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [-125.0, -125.0, float(rng.uniform(0, 200))]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [250.0 / hu.shape[0]] * 2
    ds.BitsAllocated = 16
    center, width = HEADER_WINDOWS[rng.integers(len(HEADER_WINDOWS))]
    if rng.random() < config.multivalued_window_fraction:
        ds.WindowCenter = [center, center]
        ds.WindowWidth = [width, width]
    else:
        ds.WindowCenter = center
        ds.WindowWidth = width
    ds.RescaleSlope = 1
    if rng.random() < config.signed_as_unsigned_fraction:
        # Signed 12-bit values stored as unsigned with intercept 0: dicom.repair_signed_as_unsigned undoes it.
        stored = np.mod(np.clip(np.rint(hu), -1000, 3095).astype(np.int32), 4096).astype(np.uint16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleIntercept = 0
    else:
        stored = np.clip(np.rint(hu) + 1024, -32768, 32767).astype(np.int16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleIntercept = -1024
    ds.PixelData = stored.tobytes()
    return ds


def image_ids(n: int, rng: np.random.Generator) -> list[str]:
    ids: dict[str, None] = {}
    while len(ids) < n:
        for value in rng.integers(0, 16**9, size=n - len(ids)):
            ids[f"ID_{int(value):09x}"] = None
    return list(ids)


DICOM_HEADER_BYTES = 700  # at least, beside the pixel data: 780-800 bytes measured on these files


def require_room(config: SyntheticConfig, out_dir: Path) -> None:
    """Refuse at once a dataset the disk cannot hold (1,000,000 slices of 1024 px are about 2 TB)."""
    size = config.image_size
    require_free_space(out_dir, "config key 'synthetic.n_images'", f"{config.n_images:,} DICOM slices of {size} × {size} px "
                       "(synthetic.image_size)", size=2 * size * size + DICOM_HEADER_BYTES, count=config.n_images)


MARKER = ".fedmlp-synthetic"  # not a declared output: Snakemake's cleanup before a rerun leaves it


def claim(out_dir: Path) -> None:
    """Write into ``out_dir`` only if it is ours: missing, empty, or marked by an earlier run of this
    generator; mark it before writing anything, so that a run killed half way leaves it ours."""
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise FedmlpError(f"{out_dir}: exists and is not a directory; refusing to replace it")
        entries = sorted(p.name for p in out_dir.iterdir())
        if entries and not (out_dir / MARKER).is_file():
            raise FedmlpError(f"{out_dir}: exists, holds {entries[0]!r} and was not written by 'fedmlp synth'; "
                              "refusing to write a synthetic dataset into it (choose an empty or new directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("A synthetic dataset written by 'fedmlp synth'; 'fedmlp synth' may replace what is here.\n")


def generate(config: SyntheticConfig, out_dir: Path) -> pd.DataFrame:
    """Write ``out_dir/stage_2_train/*.dcm`` and ``out_dir/stage_2_train.csv``; return the label table."""
    if config.n_images < 1:
        raise FedmlpError(f"config key 'synthetic.n_images': expected at least 1, got {config.n_images}")
    if config.image_size < 32:
        raise FedmlpError(f"config key 'synthetic.image_size': expected at least 32, got {config.image_size}")
    with exclusive(out_dir):  # a second 'fedmlp synth' into out_dir fails at once
        return _generate(config, out_dir)


def _generate(config: SyntheticConfig, out_dir: Path) -> pd.DataFrame:
    ids = image_ids(config.n_images, numpy_rng(config.seed, "ids"))
    labels = draw_labels(config, numpy_rng(config.seed, "labels"))
    require_room(config, out_dir)
    claim(out_dir)
    # The slices go into a temporary directory beside stage_2_train/, which replaces the old one whole
    # (no DICOM of an earlier, larger dataset stays) only once every slice is written; a failure (a
    # full disk) or an interruption removes it, so no partial set of DICOMs is ever left.
    with atomic_dir(out_dir / rsna.IMAGE_DIR) as image_dir:
        for index, image_id in enumerate(bar(ids, desc="synthetic DICOM", unit="img")):
            rng = numpy_rng(config.seed, "image", index)
            hu = render(labels[index], config.image_size, rng)
            with pydicom.config.disable_value_validation():  # for the Kaggle-style SOPInstanceUID
                ds = dicom_dataset(image_id, hu, index, config.seed, rng, config)
                ds.save_as(image_dir / f"{image_id}.dcm", enforce_file_format=True)
    table = pd.DataFrame(labels, index=pd.Index(ids, name="image_id"), columns=list(rsna.CLASSES))
    table["any"] = table.max(axis=1)
    repeat = ids[: config.duplicated_images]
    rsna.write_labels(table, out_dir / rsna.LABEL_FILE, repeat=repeat)
    log.info("wrote %d DICOM files and %s (%d images listed twice, as in the real file)", len(ids), rsna.LABEL_FILE, len(repeat))
    return table
