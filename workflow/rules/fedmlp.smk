# FedMLP as three stages with their own artifacts: a stage-2 setting change reuses the warm-up.
# Like rule train, each stage's job runs every seed with pack_seeds (common.smk), else one.


rule warmup:
    """FedMLP stage 1: warm-up rounds (two views, logit-adjusted BCE, distillation), shared by all fedmlp* methods."""
    input:
        **run_store_files(),
        partition=per_run(PARTITION),
    output:
        model=per_run(f"{WARMUP}/model.pt"),
        rounds=per_run(f"{WARMUP}/rounds.csv"),
        compute=per_run(f"{WARMUP}/compute.json"),  # its counted model passes, added into each run's metrics.json by the teacher stage
        live=per_run_directory(f"{WARMUP}/live"),  # per-round metrics as the rounds happen (DVCLive; rebuilt on resume)
    log:
        per_run(f"logs/warmup/{WARMUP_ID}.log"),
    benchmark:
        per_job(f"benchmarks/warmup/{WARMUP_ID}.tsv")
    priority: 3  # the staged chain first: it is the longest path of the DAG, and the train jobs fill the gaps
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        gpu=GPU,
        runtime=training_runtime(config["fedmlp"]["warmup_rounds"]),
    params:
        runs=packed_commands(warmup_command, f"logs/warmup/{WARMUP_ID}.log"),
        code=method_code("fedmlp"),
    shell:
        "fedmlp pack --runs {params.runs:q}"


rule pseudolabel:
    """Prototypes, learning degrees, thresholds and the first missing-label detection, from the warm-up model."""
    input:
        **run_store_files(),
        partition=per_run(PARTITION),
        warmup=per_run(f"{WARMUP}/model.pt"),
    output:
        artifact=per_run(f"{RUN}/pseudolabels.json"),
        summary=per_run(f"{RUN}/pseudolabels.md"),
        compute=per_run(f"{RUN}/pseudolabel-compute.json"),  # the detection's model passes (for the teacher stage's metrics.json)
    log:
        per_run(f"logs/pseudolabel/{RUN_ID}.log"),
    wildcard_constraints:
        method=STAGED,
    priority: 2
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        gpu=GPU,
    params:
        runs=packed_commands(pseudolabel_command, f"logs/pseudolabel/{RUN_ID}.log"),
        code=method_code("fedmlp"),
    shell:
        "fedmlp pack --runs {params.runs:q}"


rule teacher:
    """FedMLP stage 2: pseudo-labels plus consistency with the global teacher, from the warm-up; then
    the final model's metrics on the fully labelled test set, with the compute of all three stages."""
    input:
        **run_store_files(),
        partition=per_run(PARTITION),
        warmup=per_run(f"{WARMUP}/model.pt"),
        warmup_rounds=per_run(f"{WARMUP}/rounds.csv"),
        pseudolabels=per_run(f"{RUN}/pseudolabels.json"),
        warmup_compute=per_run(f"{WARMUP}/compute.json"),
        pseudolabel_compute=per_run(f"{RUN}/pseudolabel-compute.json"),
    output:
        model=per_run(f"{RUN}/model.pt"),
        rounds=per_run(f"{RUN}/rounds.csv"),
        live=per_run_directory(f"{RUN}/live"),  # per-round metrics as the rounds happen (DVCLive; rebuilt on resume)
        diagnostics=per_run(f"{RUN}/diagnostics.csv"),
        metrics=per_run(f"{RUN}/metrics.json"),
        predictions=per_run(f"{RUN}/predictions.csv"),
    log:
        per_run(f"logs/teacher/{RUN_ID}.log"),
    benchmark:
        per_job(f"benchmarks/teacher/{RUN_ID}.tsv")
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
        runs=packed_commands(teacher_command, f"logs/teacher/{RUN_ID}.log"),
        code=method_code("fedmlp"),
    shell:
        "fedmlp pack --runs {params.runs:q}"
