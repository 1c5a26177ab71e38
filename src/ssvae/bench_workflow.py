"""The snakemake side of the benchmark: how long planning the full comparison (9 runs x 10
seeds) takes, and a rebuild with nothing to do (python -m ssvae.bench runs it first)."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ssvae.figures import comparison_path


def time_command(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        sys.exit(f"ssvae.bench: error: {' '.join(command)} failed in {cwd}: {' '.join(tail)}")
    return seconds


def time_workflow(checkout: Path, scratch: Path, mnist_sources: list[str], cores: int) -> dict:
    """Dry run and no-op rebuild of the full comparison (9 runs x 10 seeds) of the repository
    `checkout`, timed.

    The no-op rebuild needs every output built once: in `scratch`, a copy of the workflow builds
    the comparison with two training steps per run (the DAG, 90 training jobs and every other file
    as in the full comparison; only the runs are short). Kept there for the next bench."""
    snakemake = shutil.which("snakemake")
    if snakemake is None:
        sys.exit("ssvae.bench: error: snakemake is not on PATH (pip install -e .)")
    scratch.mkdir(parents=True, exist_ok=True)
    for name in ("workflow", "envs", "src"):
        source, dest = checkout / name, scratch / name
        if dest.is_dir():
            shutil.rmtree(dest)
        if source.is_dir():
            shutil.copytree(
                source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(source, dest)
    config = yaml.safe_load((checkout / "config.yaml").read_text())
    short = config | {
        "mnist_sources": mnist_sources,
        "epochs": 1,
        "steps_per_epoch": 1,
        "train_resources": config["train_resources"] | {"threads": 1, "device": "cpu"},
    }
    short_config = scratch / "config.yaml"
    if not short_config.exists() or yaml.safe_load(short_config.read_text()) != short:
        short_config.write_text(yaml.safe_dump(short, sort_keys=False))
    n_jobs = len(config["compare"]) * len(config["seeds"])
    target = comparison_path(config["results_dir"], "multi_seed_accuracy")
    # The target first: --resources takes several values and would swallow it.
    base = [snakemake, target, "--cores", str(cores), "--resources", f"gpu={cores}"]
    dry_run_from_scratch = None
    if not (scratch / target).exists():
        dry_run_from_scratch = time_command([*base, "--dry-run"], scratch)
        print(f"building the short comparison ({n_jobs} training jobs) in {scratch}", flush=True)
        build_seconds = time_command(base, scratch)
        print(f"  built in {build_seconds:.0f} s", flush=True)
    noop_seconds = time_command(base, scratch)
    dry_run_built = time_command([*base, "--dry-run"], scratch)
    return {
        "training_jobs": n_jobs,
        "dry_run_s": dry_run_from_scratch,
        "dry_run_built_s": dry_run_built,
        "noop_rebuild_s": noop_seconds,
        "scratch": str(scratch),
    }
