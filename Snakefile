from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"


validate_config(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/data.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/plots.smk"


rule all:
    input:
        "results/plots/multi_seed_accuracy.png",
        expand(
            "results/plots/multi_seed_accuracy_loss_{split}.png",
            split=["train", "valid"],
        ),
        single_seed_figures(),
        "results/metrics/summary.csv",
