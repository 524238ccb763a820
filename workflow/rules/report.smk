rule report:
    """summary.csv (long form), report.md and the per-round test mAP plot."""
    input:
        final_metrics(),
    output:
        summary="results/summary.csv",
        report="results/report.md",
        figure="results/map_per_round.png",
    params:
        code=code_fingerprint(*CODE["report"]),
    conda:
        ENV
    log:
        "logs/report/report.log",
    shell:
        "fedmlp report {input} --summary {output.summary} --report {output.report} --figure {output.figure} > {log} 2>&1"
