rule plot_multi_seed_accuracy:
    input:
        metrics="results/metrics/metrics.h5",
        code=PACKAGE_DIR / "plots.py",
    output:
        png="results/plots/multi_seed_accuracy.png",
    log:
        "results/logs/plots/multi_seed_accuracy.log",
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
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    shell:
        "ssvae-plot accuracy-loss --split {wildcards.split} --metrics {input.metrics:q} "
        "--out {output.png:q} > {log} 2>&1"
