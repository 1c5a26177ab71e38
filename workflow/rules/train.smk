rule train:
    input:
        arrays=ancient(MNIST_ARRAYS),
        split="results/splits/seed{seed}.json",
    output:
        metrics=RUN_FILE,
    log:
        "results/logs/train/{run}/seed{seed}.log",
    benchmark:
        BENCHMARK_FILE
    wildcard_constraints:
        run=run_id_pattern(),
        seed=r"\d+",
    conda:
        "../../envs/train.yaml"
    threads: config["train_resources"]["threads"]
    resources:
        gpu=config["train_resources"]["gpus"],
        # How a run is computed, not what it computes: as resources, changing them retrains
        # nothing (params would). The run file records them.
        device=config["train_resources"]["device"],
        compile=on_off(config["train_resources"]["compile"]),
        tf32=on_off(config["train_resources"]["tf32"]),
        checkpoint_every=config["train_resources"]["checkpoint_every"],
    params:
        run_config=train_config,
        # Not an output: snakemake leaves it when the job fails, so a rerun resumes from it.
        checkpoint=CHECKPOINT_FILE,
    shell:
        "ssvae-train --data {input.arrays:q} --split {input.split:q} "
        "--run-config {params.run_config:q} --device {resources.device} --threads {threads} "
        "--compile {resources.compile} --tf32 {resources.tf32} "
        "--checkpoint {params.checkpoint:q} --checkpoint-every {resources.checkpoint_every} "
        "--out {output.metrics:q} > {log} 2>&1"
