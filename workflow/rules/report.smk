rule report:
    input:
        metrics=METRICS_H5,
        reference=REFERENCE_RESULTS,
        figures=lambda wildcards: all_figures(labels_per_class(wildcards)),
        code=[PACKAGE_DIR / "report.py", PACKAGE_DIR / "figures.py"],
    output:
        md=report(
            f"{LABELS_ROOT}/report.md",
            caption="../report/results_table.rst",
            category="Comparison",
        ),
        csv=report(
            f"{LABELS_ROOT}/report.csv",
            caption="../report/results_table.rst",
            category="Comparison",
        ),
    log:
        f"{LABELS_ROOT}/logs/report.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        threshold=config["active_kl_threshold"],
    shell:
        "ssvae-report --metrics {input.metrics:q} --reference {input.reference:q} "
        "--figures {input.figures:q} --threshold {params.threshold} "
        "--out-md {output.md:q} --out-csv {output.csv:q} > {log} 2>&1"
