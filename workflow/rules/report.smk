rule report:
    """summary.csv (long form), report.md and the same as one HTML page (report.html), table.tex, the per-round test mAP plot, with several settings the mAP against annotated classes per client, with FedMLP the pseudo-label plot; DVC's metrics and plot data. All under report.dir."""
    input:
        metrics=final_files("metrics.json"),
        diagnostics=final_files("diagnostics.csv", staged_methods()),
    output:
        **(
            {
                "pseudo_figure": report(
                    f"{REPORT}/figures/pseudolabels.png",
                    caption="../report/pseudolabels.rst",
                    category="Results",
                    subcategory="Figures",
                ),
                "pseudo_figure_svg": f"{REPORT}/figures/pseudolabels.svg",
            }
            if staged_methods()
            else {}
        ),
        **(
            {
                "annotated_figure": report(
                    f"{REPORT}/figures/map_by_annotated.png",
                    caption="../report/map_by_annotated.rst",
                    category="Results",
                    subcategory="Figures",
                ),
                "annotated_figure_svg": f"{REPORT}/figures/map_by_annotated.svg",
            }
            if len(SETTINGS) > 1
            else {}
        ),
        **({"tuning": f"{REPORT}/tuning.csv"} if POINTS else {}),  # every grid point's validation mAP (fedmlp.tuning)
        summary=report(f"{REPORT}/summary.csv", caption="../report/summary.rst", category="Results", subcategory="Tables"),
        report=report(f"{REPORT}/report.md", caption="../report/report.rst", category="Results", subcategory="Tables"),
        html=report(f"{REPORT}/report.html", caption="../report/report_html.rst", category="Results", subcategory="Report"),  # also the front page
        table=report(f"{REPORT}/table.tex", caption="../report/table.rst", category="Results", subcategory="Tables"),
        figure=report(
            f"{REPORT}/figures/map_per_round.png",
            caption="../report/map_per_round.rst",
            category="Results",
            subcategory="Figures",
        ),
        figure_svg=f"{REPORT}/figures/map_per_round.svg",  # every figure is also written as SVG (vector) beside its PNG
        dvc_metrics=f"{REPORT}/metrics.json",  # mean and SD of mAP and AUROC per method, for dvc metrics show / dvc exp show
        plot_data=f"{REPORT}/plots/map_per_round.csv",  # per-round test mAP per method, for dvc plots show
    log:
        f"logs/report/{REPORT}/report.log",  # one per report.dir: the sweep's report keeps the default's log
    conda:
        ENV
    params:
        claims=json_arg({k: v for k, v in config["report"].items() if k != "dir"}),  # alpha, equivalence_margin
        code=CODE["report"],
        tuning=lambda wildcards, output: f"--tuning {shlex.quote(output.tuning)}" if POINTS else "",
    shell:
        "fedmlp report {input.metrics:q} --diagnostics {input.diagnostics:q} --summary {output.summary:q}"
        " --report {output.report:q} --html {output.html:q} --latex {output.table:q} --figure {output.figure:q} --dvc-metrics {output.dvc_metrics:q}"
        " --plot-data {output.plot_data:q} --claims {params.claims:q} {params.tuning} > {log:q} 2>&1"
