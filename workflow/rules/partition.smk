rule split:
    """The paper's seeded image-level split, or ChestX-ray14's official patient-level lists."""
    input:
        unpack(lambda wildcards: raw_inputs(wildcards) if config["split"]["method"] == "official" else {}),
        **store_files(),
    output:
        SPLIT,
    log:
        f"logs/split/{{dataset}}/{DRAW}{{prep}}.log",
    conda:
        ENV
    params:
        settings=lambda wildcards: json_arg(drawn(config["split"], wildcards)),
        raw=raw_root,
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
        f"logs/partition/{{dataset}}/{{prep}}/{DRAW}{{setting}}.log",
    conda:
        ENV
    params:
        settings=lambda wildcards: json_arg(drawn(SETTINGS[wildcards.setting], wildcards)),
        store=parent_of("manifest"),
        code=CODE["partition"],
    shell:
        "fedmlp partition --store {params.store:q} --split {input.split:q} --settings {params.settings:q}"
        " --out {output:q} > {log:q} 2>&1"
