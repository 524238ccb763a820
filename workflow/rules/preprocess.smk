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
