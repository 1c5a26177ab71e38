rule prepare_mnist:
    output:
        arrays=MNIST_ARRAYS,
    log:
        "results/logs/prepare_mnist.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        # Where to look, not what is fetched (the files are identified by their checksums): as
        # a resource, a changed source list reruns nothing (params would).
        sources=" ".join(shlex.quote(source) for source in config["mnist_sources"]),
    params:
        # Recorded: arrays prepared in an earlier format (without their digest) are rebuilt.
        file_format=ARRAYS_FORMAT,
        # A cache of verified files, not an output, so never deleted by a rerun; a file missing,
        # truncated or corrupt there is fetched again.
        raw_dir=MNIST_RAW_DIR,
    shell:
        "(ssvae-fetch-mnist --dest {params.raw_dir:q} {resources.sources} && "
        "ssvae-prepare-mnist --raw-dir {params.raw_dir:q} --out {output.arrays:q}) > {log} 2>&1"
