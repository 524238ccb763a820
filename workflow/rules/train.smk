rule train:
    """Federated training of one method with one seed (methods trained in one stage), then the final
    model's metrics on the fully labelled test set."""
    input:
        **store_files(),
        partition=PARTITION,
    output:
        model=f"{RUN}/model.pt",
        rounds=f"{RUN}/rounds.csv",
        live=directory(f"{RUN}/live"),  # per-round metrics as the rounds happen (DVCLive; rebuilt on resume)
        metrics=f"{RUN}/metrics.json",
        predictions=f"{RUN}/predictions.csv",
    log:
        f"logs/train/{RUN_ID}.log",
    benchmark:
        f"benchmarks/train/{RUN_ID}.tsv"
    wildcard_constraints:
        method=ONE_STAGE,
    conda:
        ENV
    threads: config["train"]["threads"]
    resources:
        gpu=GPU,
        runtime=training_runtime(config["train"]["rounds"]),
    params:
        train=json_arg(config["train"]),
        model=json_arg(config["model"]),
        method=lambda wildcards: json_arg(method_settings(wildcards.method)),
        registered=registered_method,
        run=run_identity,
        store=parent_of("manifest"),
        resume=resume_file("train", RUN_ID),
        code=lambda wildcards: method_code(wildcards.method),
    shell:
        "fedmlp train --store {params.store:q} --partition {input.partition:q} --method {params.registered:q}"
        " --seed {wildcards.seed:q} --train {params.train:q} --model {params.model:q} --method-settings {params.method:q}"
        " --run {params.run:q} --out-model {output.model:q} --out-rounds {output.rounds:q} --live {output.live:q} --out-metrics {output.metrics:q}"
        " --out-predictions {output.predictions:q} --resume-state {params.resume:q} > {log:q} 2>&1"
