rule ingest:
    """Decode, window and resize the DICOMs into the memory-mappable image store."""
    input:
        unpack(raw_inputs),
    output:
        **store_files(),
    params:
        settings=json_arg(config["preprocess"]),
        source=json_arg(config["chestxray14"]) if config["dataset"] == "chestxray14" else "'{}'",
        raw=lambda wildcards: raw_root(wildcards.dataset),
        out=parent_of("manifest"),
        code=CODE["ingest"],
    threads: 2
    conda:
        ENV
    log:
        ingest="logs/ingest/{dataset}/{prep}.log",
        skipped="logs/ingest/{dataset}/{prep}.skipped.csv",  # the images left out and why; kept when ingest fails
    shell:
        "fedmlp ingest --dataset {wildcards.dataset} --raw {params.raw} --out {params.out} --report {log.skipped}"
        " --settings {params.settings} --source-settings {params.source} --workers {threads} > {log.ingest} 2>&1"
