"""Shared by the end-to-end tests: a scratch copy of the workflow, the smoke outputs."""

import re
import shutil
import struct
from pathlib import Path

import pandas as pd
import yaml

from ssvae import metrics

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("config.yaml", "workflow", "envs", "src")
SMOKE = "workflow/configs/smoke.yaml"
RUNS, SEEDS = ("ExactM2", "MLP"), (1, 2)
# Where the smoke preset writes everything but MNIST and the splits.
SMOKE_RESULTS = yaml.safe_load((REPO / SMOKE).read_text())["results_dir"]


def copy_workflow(dest: Path) -> Path:
    dest.mkdir()
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(src, dest / name)
    return dest


def run_file(workdir: Path, run: str, seed: int) -> Path:
    return workdir / f"{SMOKE_RESULTS}/runs/{run}/seed{seed}/run.h5"


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def assert_smoke_outputs(built: Path, seeds_per_job: int = 1) -> None:
    """Everything the smoke preset builds is there and looks right; with seeds_per_job 2 its
    two seeds trained together, in one job per run whose log has a line per seed and epoch."""
    for seed in SEEDS:
        assert (built / f"results/splits/seed{seed}.json").exists()
        for run in RUNS:
            assert run_file(built, run, seed).exists()
            if seeds_per_job == 1:
                log, line = f"seed{seed}.log", r"^epoch +\d+/2 .*$"
            else:
                log, line = "seeds_1_2.log", rf"^seed {seed}  epoch +\d+/2 .*$"
            log = (built / SMOKE_RESULTS / "logs/train" / run / log).read_text()
            epochs = re.findall(line, log, flags=re.MULTILINE)
            assert len(epochs) == 3
            # Training and evaluation time on every line: a job's time adds up from its log.
            assert all(re.search(r" s training +[\d.]+ s evaluation$", line) for line in epochs)
    # The smoke preset checkpoints every epoch; a completed run leaves no checkpoint behind.
    assert not list((built / SMOKE_RESULTS / "runs").rglob("checkpoint.pt"))
    table = metrics.read_table(built / SMOKE_RESULTS / "metrics/metrics.h5")
    assert set(table.run) == set(RUNS)
    assert set(table.seed) == set(SEEDS)
    assert set(table.split) == {"train", "valid", "test"}
    summary = pd.read_csv(built / SMOKE_RESULTS / "metrics/summary.csv")
    assert summary.run.tolist() == list(RUNS)
    assert summary.n_seeds.tolist() == [2, 2]
    assert summary.test_accuracy_mean.between(0, 1).all()
    assert png_size(built / SMOKE_RESULTS / "plots/multi_seed_accuracy.png") == (648, 432)
    for split in ("train", "valid"):
        assert png_size(built / SMOKE_RESULTS / f"plots/multi_seed_accuracy_loss_{split}.png") == (
            1296,
            432,
        )
    assert png_size(built / SMOKE_RESULTS / "plots/active_dims.png") == (648, 432)
    # Per-run figures of seed 2 for the run with a decoder only.
    assert png_size(built / SMOKE_RESULTS / "plots/samples_ExactM2_seed2.png") == (839, 1428)
    for figure in ("KL_Z", "KL_Z_valid_mean"):
        assert png_size(built / SMOKE_RESULTS / f"plots/{figure}_ExactM2_seed2.png") == (1296, 360)
    assert not list((built / SMOKE_RESULTS / "plots").glob("*_MLP_seed*.png"))
    # Colours follow the place among the defined runs, not among the compared ones.
    defined = list(yaml.safe_load((built / "config.yaml").read_text())["runs"])
    runs = metrics.read_runs(built / SMOKE_RESULTS / "metrics/metrics.h5")
    assert runs.palette_index.tolist() == [defined.index(run) for run in RUNS]
