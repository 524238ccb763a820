rule synthesize:
    """Write the synthetic head-CT dataset in the Kaggle RSNA ICH layout."""
    output:
        labels=f"{RAW_SYNTHETIC}/stage_2_train.csv",
        images=directory(f"{RAW_SYNTHETIC}/stage_2_train"),
    log:
        f"logs/synthesize/{DRAW}synthetic-ich.log",
    conda:
        ENV
    params:
        settings=lambda wildcards: json_arg(drawn(config["synthetic"], wildcards)),
        root=parent_of("labels"),
        code=CODE["synthesize"],
    shell:
        "fedmlp synth --settings {params.settings:q} --out {params.root:q} > {log:q} 2>&1"


if config["cluster"]["local_download"]:  # a login node with internet access, at the user's choice

    localrules:
        download,


rule download:
    """Download a real dataset into resources/<dataset>/raw (resumable; see fedmlp.download).
    Only a marker is declared: Snakemake never deletes what took hours to download."""
    output:
        DOWNLOADED,
    log:
        "logs/download/{dataset}.log",
    wildcard_constraints:
        dataset="|".join(USER_ROOT),
    conda:
        ENV
    params:
        settings=download_settings,
        root=raw_root,
        code=CODE["download"],
    shell:
        "fedmlp download {wildcards.dataset:q} --out {params.root:q} --settings {params.settings:q} --done {output:q} > {log:q} 2>&1"
