rule plot_comparison:
    input:
        metrics=METRICS_H5,
        code=[PACKAGE_DIR / "plots.py", PACKAGE_DIR / "figures.py"],
    output:
        png=report(
            comparison_path(LABELS_ROOT, "{figure}"),
            caption="../report/figure.rst",
            category=figure_category,
            labels=figure_labels,
        ),
        # ssvae-plot writes it beside the PNG; the reports embed the PNG only.
        vector=comparison_path(LABELS_ROOT, "{figure}", VECTOR_FORMAT),
    log:
        f"{LABELS_ROOT}/logs/plots/{{figure}}.log",
    wildcard_constraints:
        figure="|".join(figure.stem for figure in FIGURES if figure.source == "metrics"),
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        options=figure_options,
        caption=figure_caption,
    shell:
        "ssvae-plot {wildcards.figure} --metrics {input.metrics:q} {params.options} "
        "--out {output.png:q} > {log} 2>&1"


rule plot_per_run:
    input:
        run_file=RUN_FILE,
        code=[PACKAGE_DIR / "plots.py", PACKAGE_DIR / "figures.py"],
    output:
        png=report(
            per_run_path(LABELS_ROOT, "{figure}", "{run}", "{seed}"),
            caption="../report/figure.rst",
            category=figure_category,
            subcategory="{run}",
            labels=figure_labels,
        ),
    log:
        f"{LABELS_ROOT}/logs/plots/{{figure}}_{{run}}_seed{{seed}}.log",
    wildcard_constraints:
        figure="|".join(figure.stem for figure in FIGURES if figure.per_run),
        run=run_id_pattern(),
        seed=r"\d+",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        options=figure_options,
        caption=figure_caption,
    shell:
        "ssvae-plot {wildcards.figure} --run-file {input.run_file:q} {params.options} "
        "--out {output.png:q} > {log} 2>&1"


rule plot_accuracy_vs_labels:
    input:
        metrics=label_count_metrics(),
        published=PUBLISHED_M2,
        code=[PACKAGE_DIR / "plots.py", PACKAGE_DIR / "figures.py"],
    output:
        png=report(
            ACCURACY_VS_LABELS,
            caption="../report/figure.rst",
            category=LABEL_COUNT_FIGURE.category,
            labels={"figure": LABEL_COUNT_FIGURE.title},
        ),
        vector=comparison_path(RESULTS, LABEL_COUNT_FIGURE.stem, VECTOR_FORMAT),
    log:
        f"{RESULTS}/logs/plots/{LABEL_COUNT_FIGURE.stem}.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        caption=LABEL_COUNT_FIGURE.caption,
        # Its inputs follow the config: recorded, so that a count removed redraws it.
        labels_per_class=config["labels_per_class"],
    shell:
        "ssvae-plot accuracy_vs_labels --label-count-metrics {input.metrics:q} "
        "--published {input.published:q} --out {output.png:q} > {log} 2>&1"
