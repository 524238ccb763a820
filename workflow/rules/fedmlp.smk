# FedMLP as three stages with their own artifacts: a stage-2 setting change reuses the warm-up.


rule warmup:
    """FedMLP stage 1: warm-up rounds (two views, logit-adjusted BCE, distillation), shared by all fedmlp* methods."""
    input:
        **store_files(),
        partition=PARTITION,
    output:
        model=f"{WARMUP}/model.pt",
        rounds=f"{WARMUP}/rounds.csv",
        compute=f"{WARMUP}/compute.json",  # its counted model passes, added into each run's metrics.json by the teacher stage
        live=directory(f"{WARMUP}/live"),  # per-round metrics as the rounds happen (DVCLive; rebuilt on resume)
    log:
        f"logs/warmup/{WARMUP_ID}.log",
    benchmark:
        f"benchmarks/warmup/{WARMUP_ID}.tsv"
    priority: 3  # the staged chain first: it is the longest path of the DAG, and the train jobs fill the gaps
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        gpu=GPU,
        runtime=training_runtime(config["fedmlp"]["warmup_rounds"]),
    params:
        train=json_arg(config["train"]),
        model=json_arg(config["model"]),
        fedmlp=json_arg(fedmlp_stage1()),
        store=parent_of("manifest"),
        resume=resume_file("warmup", WARMUP_ID),
        code=method_code("fedmlp"),
    shell:
        "fedmlp warmup --store {params.store:q} --partition {input.partition:q} --method fedmlp --seed {wildcards.seed:q}"
        " --train {params.train:q} --model {params.model:q} --method-settings {params.fedmlp:q}"
        " --out-model {output.model:q} --out-rounds {output.rounds:q} --out-compute {output.compute:q} --live {output.live:q}"
        " --resume-state {params.resume:q} > {log:q} 2>&1"


rule pseudolabel:
    """Prototypes, learning degrees, thresholds and the first missing-label detection, from the warm-up model."""
    input:
        **store_files(),
        partition=PARTITION,
        warmup=f"{WARMUP}/model.pt",
    output:
        artifact=f"{RUN}/pseudolabels.json",
        summary=f"{RUN}/pseudolabels.md",
        compute=f"{RUN}/pseudolabel-compute.json",  # the detection's model passes (for the teacher stage's metrics.json)
    log:
        f"logs/pseudolabel/{RUN_ID}.log",
    wildcard_constraints:
        method=STAGED,
    priority: 2
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        gpu=GPU,
    params:
        train=json_arg(config["train"]),
        model=json_arg(config["model"]),
        fedmlp=lambda wildcards: json_arg(fedmlp_detection(wildcards.method)),
        registered=registered_method,
        store=parent_of("manifest"),
        code=method_code("fedmlp"),
    shell:
        "fedmlp pseudolabel --store {params.store:q} --partition {input.partition:q} --method {params.registered:q}"
        " --seed {wildcards.seed:q} --train {params.train:q} --model {params.model:q} --method-settings {params.fedmlp:q}"
        " --warmup-model {input.warmup:q} --out-artifact {output.artifact:q} --out-summary {output.summary:q}"
        " --out-compute {output.compute:q} > {log:q} 2>&1"


rule teacher:
    """FedMLP stage 2: pseudo-labels plus consistency with the global teacher, from the warm-up; then
    the final model's metrics on the fully labelled test set, with the compute of all three stages."""
    input:
        **store_files(),
        partition=PARTITION,
        warmup=f"{WARMUP}/model.pt",
        warmup_rounds=f"{WARMUP}/rounds.csv",
        pseudolabels=f"{RUN}/pseudolabels.json",
        warmup_compute=f"{WARMUP}/compute.json",
        pseudolabel_compute=f"{RUN}/pseudolabel-compute.json",
    output:
        model=f"{RUN}/model.pt",
        rounds=f"{RUN}/rounds.csv",
        live=directory(f"{RUN}/live"),  # per-round metrics as the rounds happen (DVCLive; rebuilt on resume)
        diagnostics=f"{RUN}/diagnostics.csv",
        metrics=f"{RUN}/metrics.json",
        predictions=f"{RUN}/predictions.csv",
    log:
        f"logs/teacher/{RUN_ID}.log",
    benchmark:
        f"benchmarks/teacher/{RUN_ID}.tsv"
    wildcard_constraints:
        method=STAGED,
    priority: 1
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        gpu=GPU,
        runtime=training_runtime(config["train"]["rounds"] - config["fedmlp"]["warmup_rounds"]),
    params:
        train=json_arg(config["train"]),
        model=json_arg(config["model"]),
        fedmlp=lambda wildcards: json_arg(method_settings(wildcards.method)),
        registered=registered_method,
        run=run_identity,
        store=parent_of("manifest"),
        resume=resume_file("teacher", RUN_ID),
        code=method_code("fedmlp"),
    shell:
        "fedmlp teacher --store {params.store:q} --partition {input.partition:q} --method {params.registered:q}"
        " --seed {wildcards.seed:q} --train {params.train:q} --model {params.model:q} --method-settings {params.fedmlp:q}"
        " --warmup-model {input.warmup:q} --warmup-rounds {input.warmup_rounds:q} --pseudolabels {input.pseudolabels:q}"
        " --earlier-compute {input.warmup_compute:q} {input.pseudolabel_compute:q}"
        " --run {params.run:q} --out-model {output.model:q} --out-rounds {output.rounds:q} --live {output.live:q}"
        " --out-diagnostics {output.diagnostics:q} --out-metrics {output.metrics:q} --out-predictions {output.predictions:q}"
        " --resume-state {params.resume:q} > {log:q} 2>&1"
