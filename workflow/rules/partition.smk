rule split:
    """The paper's seeded image-level split, or ChestX-ray14's official patient-level lists."""
    input:
        unpack(lambda wildcards: raw_inputs(wildcards) if config["split"]["method"] == "official" else {}),
        **store_files(),
    output:
        SPLIT,
    log:
        "logs/split/{dataset}/{prep}.log",
    conda:
        ENV
    params:
        settings=json_arg(config["split"]),
        raw=lambda wildcards: raw_root(wildcards.dataset),
        store=parent_of("manifest"),
        code=CODE["split"],
    shell:
        "fedmlp split --store {params.store:q} --raw {params.raw:q} --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule partition:
    """Clients, their images and the classes each annotates."""
    input:
        **store_files(),
        split=SPLIT,
    output:
        PARTITION,
    log:
        "logs/partition/{dataset}/{prep}/{setting}.log",
    conda:
        ENV
    params:
        settings=lambda wildcards: json_arg(SETTINGS[wildcards.setting]),
        store=parent_of("manifest"),
        code=CODE["partition"],
    shell:
        "fedmlp partition --store {params.store:q} --split {input.split:q} --settings {params.settings:q}"
        " --out {output:q} > {log:q} 2>&1"
