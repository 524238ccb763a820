rule split:
    """Seeded image-level train/test split."""
    input:
        **store_files(),
    output:
        SPLIT,
    params:
        settings=json_arg(config["split"]),
        store=parent_of("manifest"),
        code=code_fingerprint(*CODE["split"]),
    conda:
        ENV
    log:
        "logs/split/{dataset}/{prep}.log",
    shell:
        "fedmlp split --store {params.store} --settings {params.settings} --out {output} > {log} 2>&1"


rule partition:
    """Clients, their images and the classes each annotates."""
    input:
        **store_files(),
        split=SPLIT,
    output:
        PARTITION,
    params:
        settings=lambda wildcards: json_arg(SETTINGS[wildcards.setting]),
        store=parent_of("manifest"),
        code=code_fingerprint(*CODE["partition"]),
    conda:
        ENV
    log:
        "logs/partition/{dataset}/{prep}/{setting}.log",
    shell:
        "fedmlp partition --store {params.store} --split {input.split} --settings {params.settings}"
        " --out {output} > {log} 2>&1"
