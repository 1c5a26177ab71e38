rule aggregate_metrics:
    input:
        runs=lambda wildcards: run_files(wildcards.labels),
        code=[PACKAGE_DIR / "metrics.py", PACKAGE_DIR / "runfile.py"],
    output:
        h5=METRICS_H5,
        csv=report(
            f"{LABELS_ROOT}/metrics/summary.csv",
            caption="../report/summary.rst",
            category="Comparison",
        ),
    log:
        f"{LABELS_ROOT}/logs/aggregate_metrics.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        runs=runs_json(),
        reference_run=config["reference_run"],
        labels_per_class=labels_per_class,
    shell:
        "ssvae-metrics {input.runs:q} --runs {params.runs:q} "
        "--reference-run {params.reference_run:q} "
        "--labels-per-class {params.labels_per_class} "
        "--out-h5 {output.h5:q} --out-csv {output.csv:q} > {log} 2>&1"
