rule ingest:
    """Decode, window and resize the images into the memory-mappable image store."""
    input:
        unpack(raw_inputs),
    output:
        **store_files(),
    log:
        ingest=f"logs/ingest/{{dataset}}/{STORE_DRAW}{{prep}}.log",
        skipped=f"logs/ingest/{{dataset}}/{STORE_DRAW}{{prep}}.skipped.csv",  # the images left out and why; kept when ingest fails
    conda:
        ENV
    threads: 2
    params:
        settings=json_arg(config["preprocess"]),
        source=source_settings,
        images=raw_fingerprint,
        raw=raw_root,
        out=parent_of("manifest"),
        code=CODE["ingest"],
    shell:
        "fedmlp ingest --dataset {wildcards.dataset:q} --raw {params.raw:q} --out {params.out:q} --report {log.skipped:q}"
        " --settings {params.settings:q} --source-settings {params.source:q} --workers {threads:q} > {log.ingest:q} 2>&1"


rule verify_stores:
    """Verify the config's stores in full and record it (fedmlp verify): `snakemake verify_stores`, once
    after a store was written or changed, so that no training job reads a whole store first (without
    it, the first job that reads a store does it; docs/performance.md)."""
    input:
        [
            store_files(STORE.format(dataset=config["dataset"], prep=prep_name(), draw=seed))["images"]
            for seed in sorted(set(config["seeds"]) if STORE_DRAW else {0})
        ],
    log:
        "logs/verify_stores.log",  # what was verified, how large and how long (fedmlp verify's lines)
    localrule: True
    conda:
        ENV
    params:
        stores=lambda wildcards, input: [os.path.dirname(path) for path in input],
    shell:
        "fedmlp verify {params.stores:q} > {log:q} 2>&1"
