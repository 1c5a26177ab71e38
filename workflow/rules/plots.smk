rule plot_multi_seed_accuracy:
    input:
        metrics="results/metrics/metrics.h5",
        code=PACKAGE_DIR / "plots.py",
    output:
        png="results/plots/multi_seed_accuracy.png",
    log:
        "results/logs/plots/multi_seed_accuracy.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    shell:
        "ssvae-plot accuracy --metrics {input.metrics:q} --out {output.png:q} > {log} 2>&1"


rule plot_multi_seed_accuracy_loss:
    input:
        metrics="results/metrics/metrics.h5",
        code=PACKAGE_DIR / "plots.py",
    output:
        png="results/plots/multi_seed_accuracy_loss_{split}.png",
    log:
        "results/logs/plots/multi_seed_accuracy_loss_{split}.log",
    wildcard_constraints:
        split="train|valid",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    shell:
        "ssvae-plot accuracy-loss --split {wildcards.split} --metrics {input.metrics:q} "
        "--out {output.png:q} > {log} 2>&1"


rule plot_active_dims:
    input:
        metrics="results/metrics/metrics.h5",
        code=PACKAGE_DIR / "plots.py",
    output:
        png="results/plots/active_dims.png",
    log:
        "results/logs/plots/active_dims.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        threshold=config["active_kl_threshold"],
    shell:
        "ssvae-plot active-dims --threshold {params.threshold} --metrics {input.metrics:q} "
        "--out {output.png:q} > {log} 2>&1"


rule plot_single_seed:
    input:
        run_file=RUN_FILE,
        code=PACKAGE_DIR / "plots.py",
    output:
        png="results/plots/{figure}_{run}_seed{seed}.png",
    log:
        "results/logs/plots/{figure}_{run}_seed{seed}.log",
    wildcard_constraints:
        figure="|".join(SINGLE_SEED_FIGURES),
        run=run_id_pattern(),
        seed=r"\d+",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        kind=lambda wildcards: SINGLE_SEED_FIGURES[wildcards.figure],
        label=run_label,
    shell:
        "ssvae-plot {params.kind} --run-file {input.run_file:q} --label {params.label:q} "
        "--out {output.png:q} > {log} 2>&1"
