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
        "fedmlp report {input.metrics:q} --diagnostics {input.diagnostics:q} --summary {output.summary:q}"
        " --report {output.report:q} --figure {output.figure:q} > {log:q} 2>&1"
