rule ingest:
    """Decode, window and resize the DICOMs into the memory-mappable image store."""
    input:
        unpack(raw_inputs),
    output:
        **store_files(),
    params:
        settings=json_arg(config["preprocess"]),
        raw=parent_of("raw_labels"),
        out=parent_of("manifest"),
        code=code_fingerprint(*CODE["ingest"]),
    threads: 2
    conda:
        ENV
    log:
        "logs/ingest/{dataset}/{prep}.log",
    shell:
        "fedmlp ingest --dataset {wildcards.dataset} --raw {params.raw} --out {params.out}"
        " --settings {params.settings} --workers {threads} > {log} 2>&1"
