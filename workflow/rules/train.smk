rule train:
    input:
        arrays=ancient(MNIST_ARRAYS),
        split="results/splits/seed{seed}.json",
    output:
        metrics=RUN_FILE,
    log:
        "results/logs/train/{run}/seed{seed}.log",
    wildcard_constraints:
        run=run_id_pattern(),
        seed=r"\d+",
    conda:
        "../../envs/train.yaml"
    threads: config["train_resources"]["threads"]
    resources:
        gpu=config["train_resources"]["gpus"],
    params:
        run_config=train_config,
        device=config["train_resources"]["device"],
    shell:
        "ssvae-train --data {input.arrays:q} --split {input.split:q} "
        "--run-config {params.run_config:q} --device {params.device} --threads {threads} "
        "--out {output.metrics:q} > {log} 2>&1"
