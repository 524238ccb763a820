"""The synthetic source writes the Kaggle RSNA layout, readable by the real-data code path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from fedmlp.dicom import read_ct
from fedmlp.seeding import numpy_rng
from fedmlp.sources import rsna, synthetic
from fedmlp.sources.synthetic import SyntheticConfig


def test_layout_and_label_file(raw_dataset: Path, synthetic_config: SyntheticConfig) -> None:
    files = sorted((raw_dataset / rsna.IMAGE_DIR).iterdir())
    assert len(files) == synthetic_config.n_images
    assert all(re.fullmatch(r"ID_[0-9a-f]{9}\.dcm", f.name) for f in files)

    raw = pd.read_csv(raw_dataset / rsna.LABEL_FILE)
    assert list(raw.columns) == ["ID", "Label"]
    assert raw["ID"].str.fullmatch(r"ID_[0-9a-f]{9}_(epidural|intraparenchymal|intraventricular|subarachnoid|subdural|any)").all()
    expected_rows = 6 * (synthetic_config.n_images + synthetic_config.duplicated_images)
    assert len(raw) == expected_rows

    parsed = rsna.read_labels(raw_dataset / rsna.LABEL_FILE)
    assert parsed.duplicate_rows == 6 * synthetic_config.duplicated_images
    assert len(parsed.duplicated_images) == synthetic_config.duplicated_images
    assert set(parsed.table.index) == {f.stem for f in files}
    table = parsed.table
    assert (table["any"] == table[list(rsna.CLASSES)].max(axis=1)).all()
    assert 0 < table[list(rsna.CLASSES)].to_numpy().mean() < 0.6


def test_dicom_tags_and_quirks(raw_dataset: Path) -> None:
    datasets = [pydicom.dcmread(f) for f in sorted((raw_dataset / rsna.IMAGE_DIR).iterdir())]
    normal = [d for d in datasets if d.PixelRepresentation == 1]
    quirky = [d for d in datasets if d.BitsStored == 12 and d.PixelRepresentation == 0 and float(d.RescaleIntercept) > -100]
    assert normal and quirky and len(normal) + len(quirky) == len(datasets)
    for ds in normal:
        assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleIntercept) == -1024
    assert all(d.Modality == "CT" and d.PhotometricInterpretation == "MONOCHROME2" for d in datasets)
    multi = [d for d in datasets if isinstance(d.WindowCenter, pydicom.multival.MultiValue)]
    assert 0 < len(multi) < len(datasets)
    # the quirky files read back to the same HU range as normal ones once repaired
    for ds_list in (normal, quirky):
        path = Path(ds_list[0].filename)
        hu = read_ct(path).hu
        assert hu.min() == pytest.approx(-1000, abs=40) and 900 < hu.max() < 1600


def test_generation_is_deterministic(tmp_path: Path) -> None:
    config = SyntheticConfig(n_images=6, image_size=48)
    synthetic.generate(config, tmp_path / "a")
    synthetic.generate(config, tmp_path / "b")
    synthetic.generate(SyntheticConfig(n_images=6, image_size=48, seed=7), tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "a" / rsna.IMAGE_DIR).iterdir())
    for name in names:
        assert (tmp_path / "a" / rsna.IMAGE_DIR / name).read_bytes() == (tmp_path / "b" / rsna.IMAGE_DIR / name).read_bytes()
    assert (tmp_path / "a" / rsna.LABEL_FILE).read_bytes() == (tmp_path / "b" / rsna.LABEL_FILE).read_bytes()
    assert names != sorted(p.name for p in (tmp_path / "c" / rsna.IMAGE_DIR).iterdir())


@pytest.mark.parametrize("subtype", rsna.CLASSES)
def test_hemorrhages_are_drawn_where_they_occur(subtype: str) -> None:
    for trial in range(5):
        rng = numpy_rng(11, subtype, trial)
        hu, head = synthetic.draw_head(128, rng)
        before = hu.copy()
        synthetic.DRAW[subtype](hu, head, rng)
        blood = (hu != before) & (hu >= 50)
        assert blood.sum() >= 8, f"{subtype}: lesion too small to see"
        assert head.brain[blood].all(), f"{subtype}: blood outside the brain"
        r = head.r[blood]
        if subtype in ("epidural", "subdural"):
            assert r.min() > 0.75, f"{subtype} must hug the inner skull"
        elif subtype == "intraventricular":
            assert np.logical_or.reduce(head.ventricles)[blood].all()
        elif subtype == "subarachnoid":
            assert (head.rim | head.sulci | head.fissure)[blood].all()
        elif subtype == "intraparenchymal":
            assert r.max() < 0.95


def test_epidural_is_thicker_and_shorter_than_subdural() -> None:
    thickness = {}
    for subtype in ("epidural", "subdural"):
        depths, spans = [], []
        for trial in range(20):
            rng = numpy_rng(3, subtype, trial)
            hu, head = synthetic.draw_head(128, rng)
            before = hu.copy()
            synthetic.DRAW[subtype](hu, head, rng)
            blood = hu != before
            depths.append((1 - head.r[blood]).max())
            spans.append(np.ptp(np.unwrap(np.sort(head.theta[blood]))))
        thickness[subtype] = (np.mean(depths), np.mean(spans))
    assert thickness["epidural"][0] > 1.5 * thickness["subdural"][0]
    assert thickness["epidural"][1] < thickness["subdural"][1]


def test_unknown_prevalence_key_is_named(tmp_path: Path) -> None:
    from fedmlp.errors import FedmlpError

    with pytest.raises(FedmlpError, match=r"synthetic\.prevalence\.chronic"):
        synthetic.generate(SyntheticConfig(n_images=3, prevalence={"chronic": 0.1}), tmp_path)


# --- label model: presets, latent co-occurrence, enrichment --------------------------------------------

PRESET = {"preset": "rsna-slices", "prevalence": None, "cooccurrence": None}


def _labels(n: int, seed: int = 5, **settings) -> np.ndarray:
    config = SyntheticConfig(n_images=n, **settings)
    return synthetic.draw_labels(config, numpy_rng(seed, "labels"))


@pytest.mark.parametrize(
    ("settings", "md5"),
    [  # computed with the code before presets existed (commit 4f146e6)
        ({"n_images": 500}, "b5c2f88e7d323c1ebbb911c043dec413"),
        ({"n_images": 500, "seed": 9, "cooccurrence": 0.7, "prevalence": {"epidural": 0.01, "intraparenchymal": 0.05, "subdural": 0.3}},
         "7b62b461d05f7c10b066173452827237"),
    ],
)
def test_scalar_cooccurrence_draws_what_it_drew_before(settings: dict, md5: str) -> None:
    import hashlib

    config = SyntheticConfig(**settings)
    labels = synthetic.draw_labels(config, numpy_rng(config.seed, "labels"))
    assert hashlib.md5(labels.tobytes()).hexdigest() == md5


def test_scalar_label_file_is_unchanged(tmp_path: Path) -> None:
    import hashlib

    synthetic.generate(SyntheticConfig(n_images=12, image_size=32), tmp_path / "d")
    assert hashlib.md5((tmp_path / "d" / rsna.LABEL_FILE).read_bytes()).hexdigest() == "edaedd9e90840ed2c6634fbe272b342e"


def _within_binomial(counts: np.ndarray, n: int, p: np.ndarray, z: float = 4.5) -> None:
    expected = n * p
    assert (np.abs(counts - expected) <= z * np.sqrt(n * p * (1 - p)) + 1).all(), f"counts {counts}, expected {expected}"


def test_preset_marginals_and_any_rate_match_the_real_slices() -> None:
    n = 40_000
    labels = _labels(n, **PRESET)
    real = np.array([synthetic.RSNA_POSITIVE[c] for c in rsna.CLASSES]) / synthetic.RSNA_SLICES
    _within_binomial(labels.sum(axis=0), n, real)
    p_any = synthetic.RSNA_ANY / synthetic.RSNA_SLICES
    _within_binomial(np.array([labels.any(axis=1).sum()]), n, np.array([p_any]))
    # the preset's loading is the one that gives the real any-hemorrhage rate
    model = synthetic.label_model(SyntheticConfig(**PRESET))
    assert synthetic.any_rate(model) == pytest.approx(p_any, abs=0.001)


def test_loadings_couple_subtypes_and_zero_loadings_do_not() -> None:
    n = 6_000
    prevalence = {"intraparenchymal": 0.1, "intraventricular": 0.08, "subdural": 0.12}
    coupled = _labels(n, prevalence=prevalence, cooccurrence={"intraparenchymal": 0.8, "intraventricular": 0.8})
    iph, ivh, sdh = (rsna.CLASSES.index(c) for c in ("intraparenchymal", "intraventricular", "subdural"))
    _within_binomial(coupled.sum(axis=0)[[iph, ivh, sdh]], n, np.array([0.1, 0.08, 0.12]))
    given_iph = coupled[coupled[:, iph] == 1]
    assert given_iph[:, ivh].mean() > 2 * 0.08  # P(IVH | IPH) well above P(IVH)
    # subdural has no loading: independent of intraparenchymal, within sampling error
    assert abs(given_iph[:, sdh].mean() - 0.12) < 4.5 * np.sqrt(0.12 * 0.88 / len(given_iph))


def test_enrichment_reaches_the_any_rate_and_keeps_ratios() -> None:
    n = 6_000
    base = synthetic.label_model(SyntheticConfig(**PRESET))
    enriched = synthetic.label_model(SyntheticConfig(**PRESET, enrichment=0.5))
    ratio = enriched.prevalence / base.prevalence
    assert np.allclose(ratio, ratio[0]) and ratio[0] > 1
    assert synthetic.any_rate(enriched) == pytest.approx(0.5, abs=1e-6)
    labels = _labels(n, **PRESET, enrichment=0.5)
    _within_binomial(labels.sum(axis=0), n, enriched.prevalence)
    _within_binomial(np.array([labels.any(axis=1).sum()]), n, np.array([0.5]))
    # the scalar model: any = 1 - prod(1 - p), enriched the same way
    scalar = synthetic.label_model(SyntheticConfig(enrichment=0.6))
    assert 1 - np.prod(1 - scalar.prevalence) == pytest.approx(0.6) and np.allclose(scalar.prevalence, scalar.prevalence[0])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"preset": "rsna-slices"}, r"^config key 'synthetic\.prevalence': set together with synthetic\.preset 'rsna-slices'"),
        ({"preset": "rsna-slices", "prevalence": None}, r"^config key 'synthetic\.cooccurrence': set together with synthetic\.preset"),
        ({"prevalence": None}, r"^config key 'synthetic\.prevalence': null needs a synthetic\.preset"),
        ({"cooccurrence": {"epidural": 0.5, "chronic": 0.2}}, r"^config key 'synthetic\.cooccurrence\.chronic': unknown subtype"),
        ({"cooccurrence": {"subdural": 1.0}}, r"^config key 'synthetic\.cooccurrence\.subdural': a loading must be below 1"),
    ],
)
def test_bad_label_settings_name_the_key(tmp_path: Path, settings: dict, message: str) -> None:
    from fedmlp.errors import FedmlpError

    with pytest.raises(FedmlpError, match=message) as caught:
        synthetic.generate(SyntheticConfig(n_images=10, **settings), tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ('{"preset": "rsna-studies"}', "synthetic.preset"),
        ('{"cooccurrence": {"subdural": -0.1}}', "synthetic.cooccurrence.subdural"),
        ('{"cooccurrence": "strong"}', "synthetic.cooccurrence"),
        ('{"enrichment": 1.0}', "synthetic.enrichment"),
    ],
)
def test_bad_label_settings_from_json_name_the_key(settings: str, key: str) -> None:
    from fedmlp.config import from_json
    from fedmlp.errors import FedmlpError

    with pytest.raises(FedmlpError, match=f"^config key '{re.escape(key)}'"):
        from_json(SyntheticConfig, settings, "synthetic")


def test_realistic_config_keeps_positives_of_every_class_in_every_split() -> None:
    """config/realistic.yaml over config/config.yaml (as `--configfile` merges it): labels only, split
    as the workflow splits the synthetic store (sorted IDs): >= 30 positives per class in test, >= 20
    in validation."""
    import yaml
    from conftest import REPO
    from snakemake.utils import update_config

    from fedmlp.config import SplitConfig, from_dict
    from fedmlp.methods import registry
    from fedmlp.partition import carve_validation, random_split
    from fedmlp.workflow_config import check_combinations, check_schema

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config" / "realistic.yaml").read_text()))
    check_schema(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    check_combinations(config)
    settings = from_dict(SyntheticConfig, config["synthetic"], "synthetic")
    split_config = from_dict(SplitConfig, config["split"], "split")
    ids = synthetic.image_ids(settings.n_images, numpy_rng(settings.seed, "ids"))
    labels = pd.DataFrame(synthetic.draw_labels(settings, numpy_rng(settings.seed, "labels")), index=ids, columns=list(rsna.CLASSES))
    split = carve_validation(random_split(sorted(ids), split_config), split_config)
    assert labels.loc[split.test].sum().min() >= 30
    assert labels.loc[split.val].sum().min() >= 20
    assert config["methods"] == registry.names()  # realistic.yaml says all


def test_the_default_validation_split_has_twenty_positives_per_class_in_every_draw() -> None:
    """The default (labels only, as the workflow draws and splits them): each seed's own draw
    (replicates: data adds the seed to the generator and split seeds) keeps >= 20 positives of every
    class in the validation split, which picks thresholds, tuning points and the pairs compared."""
    import yaml
    from conftest import REPO

    from fedmlp.config import SplitConfig, from_dict
    from fedmlp.partition import carve_validation, random_split
    from fedmlp.workflow_config import check_schema

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    check_schema(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert config["replicates"] == "data"
    for seed in config["seeds"]:
        settings = from_dict(SyntheticConfig, {**config["synthetic"], "seed": config["synthetic"]["seed"] + seed}, "synthetic")
        split_config = from_dict(SplitConfig, {**config["split"], "seed": config["split"]["seed"] + seed}, "split")
        ids = synthetic.image_ids(settings.n_images, numpy_rng(settings.seed, "ids"))
        labels = pd.DataFrame(synthetic.draw_labels(settings, numpy_rng(settings.seed, "labels")), index=ids, columns=list(rsna.CLASSES))
        split = carve_validation(random_split(sorted(ids), split_config), split_config)
        assert labels.loc[split.val].sum().min() >= 20, seed
