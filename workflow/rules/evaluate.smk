rule evaluate:
    """Final-round metrics on the fully labelled test set."""
    input:
        **store_files(),
        partition=PARTITION,
        model=f"{RUN}/model.pt",
        rounds=f"{RUN}/rounds.csv",
    output:
        metrics=f"{RUN}/metrics.json",
        predictions=f"{RUN}/predictions.csv",
    params:
        run=lambda wildcards: json_arg(
            {"dataset": wildcards.dataset, "setting": wildcards.setting, "method": wildcards.method, "seed": int(wildcards.seed)}
        ),
        store=parent_of("manifest"),
        trained_with=training_settings,
        device="cuda" if GPU else "cpu",
        code=CODE["evaluate"],
    resources:
        gpu=GPU,
    conda:
        ENV
    log:
        f"logs/evaluate/{RUN_ID}.log",
    shell:
        "fedmlp evaluate --store {params.store:q} --partition {input.partition:q} --model {input.model:q}"
        " --rounds {input.rounds:q} --run {params.run:q} --device {params.device:q}"
        " --out-metrics {output.metrics:q} --out-predictions {output.predictions:q} > {log:q} 2>&1"
