"""The real snakemake on the smoke preset, in a scratch copy of the workflow, as a user runs it."""

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import (
    RUNS,
    SEEDS,
    SMOKE,
    assert_smoke_outputs,
    copy_workflow,
    run_file,
)

HANG_GUARD_S = 1200  # a stuck snakemake fails the test instead of stalling CI

pytestmark = pytest.mark.e2e


def snakemake(
    workdir: Path, mnist_dir: Path, *args: str, config: tuple[str, ...] = (), check: bool = True
):
    """Run snakemake on the smoke preset with MNIST from `mnist_dir`, plus `config` overrides."""
    # `args` come first: options such as --forcerun and --config take every value after them.
    command = [
        "snakemake",
        *args,
        "--cores",
        "2",
        "--configfile",
        SMOKE,
        "--config",
        f"mnist_sources=[{mnist_dir}]",
        *config,
    ]
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    return result


def planned_jobs(
    workdir: Path, mnist_dir: Path, *args: str, config: tuple[str, ...] = ()
) -> dict[str, int]:
    """Rule name -> job count of a dry run ({} when there is nothing to do)."""
    output = snakemake(workdir, mnist_dir, *args, "--dry-run", config=config).stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("Reasons:")[0]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE))
    jobs.pop("total")
    return {rule: int(count) for rule, count in jobs.items()}


def mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / "results").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory, mnist_dir: Path) -> Path:
    """The smoke DAG built once; the tests below read it or run snakemake on it again."""
    workdir = copy_workflow(tmp_path_factory.mktemp("e2e") / "wf")
    snakemake(workdir, mnist_dir)
    return workdir


def test_smoke_run_builds_every_output(built: Path) -> None:
    assert_smoke_outputs(built)


def test_report_embeds_every_figure_and_matches_the_summary(built: Path) -> None:
    text = (built / "results/report.md").read_text()
    embedded = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    plots = (built / "results/plots").glob("*.png")
    figures = sorted(p.relative_to(built / "results").as_posix() for p in plots)
    assert sorted(embedded) == figures
    assert "trained for 2 epochs, the original for 300" in text
    table = pd.read_csv(built / "results/report.csv")
    summary = pd.read_csv(built / "results/metrics/summary.csv")
    assert table.run.tolist() == list(RUNS)
    assert table.valid_accuracy_best_mean.tolist() == summary.valid_accuracy_best_mean.tolist()
    assert table.original_valid_accuracy.tolist() == [0.942, 0.771]
    assert table.seeds_complete.tolist() == [2, 2]
    assert (table.wall_seconds_mean > 0).all()


def test_second_run_does_nothing(built: Path, mnist_dir: Path) -> None:
    before = mtimes(built)
    result = snakemake(built, mnist_dir)
    assert "Nothing to be done" in result.stdout + result.stderr
    assert mtimes(built) == before


def test_editing_plot_code_rerenders_without_retraining(built: Path, mnist_dir: Path) -> None:
    plot_code = built / "src/ssvae/plots.py"
    plot_code.write_text(plot_code.read_text() + "\n# an edit to the figure code\n")
    assert planned_jobs(built, mnist_dir) == {
        "plot_multi_seed_accuracy": 1,
        "plot_multi_seed_accuracy_loss": 2,
        "plot_active_dims": 1,
        "plot_single_seed": 3,
        "report": 1,
        "all": 1,
    }
    before = mtimes(built)
    snakemake(built, mnist_dir)
    changed = {p for p, t in mtimes(built).items() if before.get(p) != t}
    rerendered = {
        p.relative_to(built / "results").as_posix() for p in changed if "logs" not in p.parts
    }
    assert rerendered == {
        *(
            p.relative_to(built / "results").as_posix()
            for p in (built / "results/plots").glob("*.png")
        ),
        "report.md",
        "report.csv",
    }


def test_forcing_one_seed_reruns_only_that_seed(built: Path, mnist_dir: Path) -> None:
    target = "results/runs/ExactM2/seed1/metrics.h5"
    assert planned_jobs(built, mnist_dir, target, "--forcerun", "train") == {"train": 1}
    before = mtimes(built)
    snakemake(built, mnist_dir, target, "--forcerun", "train")
    changed = {p for p, t in mtimes(built).items() if before.get(p) != t}
    assert run_file(built, "ExactM2", 1) in changed
    other_runs = {run_file(built, run, seed) for run in RUNS for seed in SEEDS}
    assert not (changed & (other_runs - {run_file(built, "ExactM2", 1)}))
    # The comparison then re-aggregates and re-renders, and trains nothing else; the per-run
    # figures are of seed 2 and stay.
    assert planned_jobs(built, mnist_dir) == {
        "aggregate_metrics": 1,
        "plot_multi_seed_accuracy": 1,
        "plot_multi_seed_accuracy_loss": 2,
        "plot_active_dims": 1,
        "report": 1,
        "all": 1,
    }


def test_one_seed_target_needs_only_its_own_jobs(tmp_path: Path, mnist_dir: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    target = "results/runs/ExactM2/seed3/metrics.h5"
    assert planned_jobs(workdir, mnist_dir, target) == {
        "download_mnist": 1,
        "prepare_mnist": 1,
        "labeled_split": 1,
        "train": 1,
    }


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("epochs=0", "epochs = 0"),
        ("seeds=[1,-2]", "seeds.1"),
        ("compare=[NoSuchRun]", "NoSuchRun"),
    ],
)
def test_invalid_config_stops_before_any_job(
    tmp_path: Path, mnist_dir: Path, override: str, named: str
) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    result = snakemake(workdir, mnist_dir, config=(override,), check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "invalid config" in line]
    assert len(errors) == 1 and named in errors[0]
    assert not (workdir / "results").exists()


def test_full_comparison_plans_ninety_training_jobs(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    result = subprocess.run(
        ["snakemake", "--dry-run", "--cores", "4"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^train\s+90$", result.stdout, flags=re.MULTILINE)


def test_smoke_preset_can_name_any_run(tmp_path: Path, mnist_dir: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    every_run = yaml.safe_load((workdir / "config.yaml").read_text())["compare"]
    chosen = f"compare=[{','.join(every_run)}]"
    jobs = planned_jobs(workdir, mnist_dir, config=(chosen,))
    assert jobs["train"] == len(every_run) * len(SEEDS)
