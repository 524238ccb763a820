# fedmlp workflow: synthetic or real head CT → image store → split → partition →
# train (or FedMLP: warmup → pseudolabel → teacher) → evaluate → report.
# Rules are thin: each calls the `fedmlp` command (src/fedmlp/cli.py). See README.md.


include: "workflow/rules/common.smk"
include: "workflow/rules/source.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/partition.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/fedmlp.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "results/summary.csv",
        "results/report.md",
