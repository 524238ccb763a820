rule train:
    """Federated training of one method (every seed with pack_seeds, else one), then each final
    model's metrics on the fully labelled test set."""
    input:
        **run_store_files(),
        partition=per_run(PARTITION),
    output:
        model=per_run(f"{RUN}/model.pt"),
        rounds=per_run(f"{RUN}/rounds.csv"),
        live=per_run_directory(f"{RUN}/live"),  # per-round metrics as the rounds happen (DVCLive; rebuilt on resume)
        metrics=per_run(f"{RUN}/metrics.json"),
        predictions=per_run(f"{RUN}/predictions.csv"),
    log:
        per_run(f"logs/train/{RUN_ID}.log"),
    benchmark:
        per_job(f"benchmarks/train/{RUN_ID}.tsv")
    wildcard_constraints:
        method=ONE_STAGE,
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        gpu=GPU,
        runtime=training_runtime(config["train"]["rounds"]),
    params:
        runs=packed_commands(train_command, f"logs/train/{RUN_ID}.log"),
        code=lambda wildcards: method_code(wildcards.method),
    shell:
        "fedmlp pack --runs {params.runs:q}"
