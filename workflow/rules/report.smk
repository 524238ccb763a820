rule report:
    """summary.csv (long form), report.md, the per-round test mAP plot and, with FedMLP, the pseudo-label plot."""
    input:
        metrics=final_files("metrics.json"),
        diagnostics=final_files("diagnostics.csv", staged_methods()),
    output:
        summary="results/summary.csv",
        report="results/report.md",
        figure="results/figures/map_per_round.png",
        **({"pseudo_figure": "results/figures/pseudolabels.png"} if staged_methods() else {}),
    params:
        code=CODE["report"],
    conda:
        ENV
    log:
        "logs/report/report.log",
    shell:
        "fedmlp report {input.metrics} --diagnostics {input.diagnostics} --summary {output.summary}"
        " --report {output.report} --figure {output.figure} > {log} 2>&1"
