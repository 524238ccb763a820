"""Config problems fail before any work, in one line naming the key and what is allowed: schema
violations and combinations the schema cannot express (checked when Snakemake parses the workflow)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_workflow import TINY, snakemake

from fedmlp.errors import FedmlpError
from fedmlp.workflow_config import check_combinations, check_schema

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"methods": ["fedavgg"]}, "config key 'methods[0]': 'fedavgg' is not one of "),
        ({"dataset": "mnist"}, "config key 'dataset': 'mnist' is not one of synthetic-ich, ich, chestxray14"),
        ({"train": {"rounds": 0}}, "config key 'train.rounds': 0 is less than the minimum of 1"),
        ({"fedmlp": {"warmup_rounds": 0}}, "config key 'fedmlp.warmup_rounds': 0 is less than the minimum of 1"),
        ({"fedmlp": {"rounds": 12}}, "config key 'fedmlp.rounds': replaced by train.rounds: stage 2 runs train.rounds − fedmlp.warmup_rounds"),
        ({"train": {"lr": -0.1}}, "config key 'train.lr': -0.1 is less than or equal to the minimum of 0"),
        ({"train": {"weight_decay": -1}}, "config key 'train.weight_decay': -1 is less than the minimum of 0"),
        ({"fedmlp": {"tau1": {"max": 1.5}}}, "config key 'fedmlp.tau1.max': 1.5 is greater than the maximum of 1"),
        ({"federation": {"n_clients": "five"}}, "config key 'federation.n_clients': 'five' is not of type 'integer'"),
        ({"preprocess": {"max_skipped_fraction": 2}}, "config key 'preprocess.max_skipped_fraction': 2 is greater than the maximum of 1"),
        ({"preprocess": {"window": "bsb"}}, "config key 'preprocess.window': unknown key (allowed: windowing, size, max_skipped_fraction)"),
        ({"round": 3}, "config key 'round': unknown key (allowed: dataset, methods,"),
        ({"seeds": []}, "config key 'seeds': [] should be non-empty"),
        ({"cluster": {"minutes_per_round": 0}}, "config key 'cluster.minutes_per_round': 0 is less than or equal to the minimum of 0"),
        ({"cluster": {"local_download": "yes"}}, "config key 'cluster.local_download': 'yes' is not of type 'boolean'"),
        ({"sweep": [{"partition": "iid"}, {"partition": "ring"}]}, "config key 'sweep[1].partition': 'ring' is not one of iid, dirichlet, paper"),
        ({"sweep": [{"alpha": 0.5}]}, "config key 'sweep[0].alpha': unknown key (allowed: n_clients, partition, dirichlet_alpha,"),
        ({"sweep": [{"annotated_per_client": [1, 0]}]}, "config key 'sweep[0].annotated_per_client"),
        ({"sweep": []}, "config key 'sweep': [] should be non-empty"),
        ({"report": {"dir": "/tmp/x"}}, "config key 'report.dir': '/tmp/x' does not match"),
        ({"split": {"val_fraction": 1}}, "config key 'split.val_fraction': 1 is greater than or equal to the maximum of 1"),
        ({"synthetic": {"preset": "rsna-studies"}}, "config key 'synthetic.preset': 'rsna-studies' is not one of rsna-slices"),
        ({"synthetic": {"cooccurrence": {"subdural": 1.0}}}, "config key 'synthetic.cooccurrence.subdural': 1.0 is greater than or equal to the maximum of 1"),
        ({"synthetic": {"cooccurrence": {"chronic": 0.3}}}, "config key 'synthetic.cooccurrence.chronic': unknown key"),
        ({"synthetic": {"enrichment": 0}}, "config key 'synthetic.enrichment': 0 is less than or equal to the minimum of 0"),
    ],
)
def test_schema_violation_is_one_line_naming_the_key(config: dict, message: str) -> None:
    with pytest.raises(FedmlpError) as caught:
        check_schema(config, SCHEMA)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def default_config(**sections: dict) -> dict:
    """config/config.yaml with some sections changed, validated and with the defaults filled in."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for name, values in sections.items():
        config[name] = {**config[name], **values} if isinstance(config[name], dict) else values
    check_schema(config, SCHEMA)
    return config


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"fedmlp": {"tau0": {"min": 0.2, "max": 0.1, "fixed": 0.005}}}, "config key 'fedmlp.tau0.min': 0.2 is more than 'fedmlp.tau0.max' (0.1)"),
        ({"fedmlp": {"confidence_low": 0.8}}, "config key 'fedmlp.confidence_low': 0.8 is more than 'fedmlp.confidence_high' (0.7)"),
        ({"train": {"augment": {"scale_min": 1.2}}}, "config key 'train.augment.scale_min': 1.2 is more than"),
        ({"federation": {"images_per_client": 50}}, "config key 'federation.images_per_client': only used by partition 'paper', not 'iid'"),
        ({"federation": {"n_clients": 400}, "synthetic": {"n_images": 100}}, "config key 'federation.n_clients': 400 clients need at least 800 training images"),
        ({"federation": {"partition": "paper", "images_per_client": 500}, "synthetic": {"n_images": 100}, "split": {"val_fraction": 0.05}},
         "config key 'federation.images_per_client': 500 is more than the 13 training images"),
        ({"sweep": [{"partition": "iid"}, {"images_per_client": 50, "annotated_per_client": 2}]},
         "config key 'sweep[1].images_per_client': only used by partition 'paper', not 'iid'"),
        ({"sweep": [{"n_clients": 400}], "synthetic": {"n_images": 100}}, "config key 'sweep[0].n_clients': 400 clients need at least 800"),
        ({"sweep": [{"annotated_per_client": [1, 2]}, {"seed": 5, "annotated_per_client": 2}]},
         "config key 'sweep[1]': setting iid-k5-a2 again (first from sweep[0])"),
        ({"synthetic": {"n_images": 14}, "federation": {"n_clients": 2, "annotated_per_client": 3}, "split": {"val_fraction": 0.05}},
         "config key 'split.val_fraction': 0.05 of 9 training images is no validation image"),
        ({"federation": {"n_clients": 20}, "synthetic": {"n_images": 60}, "split": {"val_fraction": 0.5}},
         "config key 'split.val_fraction': its 20 validation images leave 21 training images, fewer than the 40"),
        ({"synthetic": {"preset": "rsna-slices"}}, "config key 'synthetic.prevalence': set together with synthetic.preset 'rsna-slices'"),
        ({"synthetic": {"prevalence": None, "cooccurrence": None}}, "config key 'synthetic.prevalence': null needs a synthetic.preset"),
    ],
)
def test_impossible_combination_names_the_key(sections: dict, message: str) -> None:
    config = default_config(**copy.deepcopy(sections))
    with pytest.raises(FedmlpError, match=re.escape(message)):
        check_combinations(config)


def test_default_and_paper_configs_pass() -> None:
    shipped = sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name != "ablation.yaml")  # ablation.yaml: arms, not a config
    assert {"config.yaml", "ich.yaml", "chestxray14.yaml", "missing-rates.yaml", "realistic.yaml", "tuning.yaml", "replicates.yaml"} <= set(shipped)
    for name in shipped:
        config = yaml.safe_load((REPO / "config" / name).read_text())
        check_schema(config, SCHEMA)
        check_combinations(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"rounds": 0}}, "config key 'train.rounds': 0 is less than the minimum of 1"),
        ({"federation": {"n_clients": 3, "annotated_per_client": 6}}, "config key 'federation.annotated_per_client': expected 1..5"),
        ({"federation": {"n_clients": 2, "annotated_classes": [["epidural"], ["subdural"]]}},
         "config key 'federation.annotated_classes': no client annotates 'intraparenchymal'"),
        ({"federation": {"n_clients": 40}}, "config key 'federation.n_clients': 40 clients need at least 80 training images"),
        ({"sweep": [{"annotated_per_client": [2, 6]}]},
         "config key 'federation.annotated_per_client': expected 1..5 (the number of classes), got 6 (setting iid-k3-a6, from sweep[0])"),
    ],
    ids=["zero rounds", "more annotated classes than classes", "class nobody annotates", "more clients than images", "sweep entry"],
)
def test_workflow_refuses_before_any_work(tmp_path: Path, change: dict, message: str) -> None:
    """A dry run (Snakemake parses the workflow, nothing runs): the one-line error, and no files."""
    result = snakemake(tmp_path, {**TINY, **change}, "--dry-run")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()
