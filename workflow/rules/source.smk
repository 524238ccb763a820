rule synthesize:
    """Write the synthetic head-CT dataset in the Kaggle RSNA ICH layout."""
    output:
        labels=f"{RAW_SYNTHETIC}/stage_2_train.csv",
        images=directory(f"{RAW_SYNTHETIC}/stage_2_train"),
    params:
        settings=json_arg(config["synthetic"]),
        root=parent_of("labels"),
        code=code_fingerprint(*CODE["synthesize"]),
    conda:
        ENV
    log:
        "logs/synthesize/synthetic-ich.log",
    shell:
        "fedmlp synth --settings {params.settings} --out {params.root} > {log} 2>&1"
