"""The real snakemake on the smoke preset, in a scratch copy of the workflow, as a user runs it."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import (
    REPO,
    RUNS,
    SEEDS,
    SMOKE,
    SMOKE_RESULTS,
    assert_smoke_outputs,
    assert_smoke_runs,
    copy_workflow,
    quickstart,
    run_file,
)

from ssvae import runfile
from ssvae.figures import BY_STEM, FIGURES

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


def last_attempt(workdir: Path, run: str, seed: int) -> str:
    """What the last training job of (run, seed) logged (ssvae.train's attempts log)."""
    attempts = run_file(workdir, run, seed).with_name("run.attempts.log").read_text()
    return attempts.split("--- attempt started")[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory, mnist_dir: Path) -> Path:
    """The smoke DAG built once by the README's quickstart as written (its offline form, after
    the set-up that .ci/run runs); what each line printed is kept in quickstart.out. The tests
    below read the build or run snakemake on it again."""
    workdir = copy_workflow(tmp_path_factory.mktemp("e2e") / "wf")
    printed = []
    for line in quickstart(mnist_dir)[1]:
        result = subprocess.run(
            ["bash", "-c", line], cwd=workdir, capture_output=True, text=True, timeout=HANG_GUARD_S
        )
        if result.returncode != 0:
            pytest.fail(f"{line} failed:\n{result.stderr[-4000:]}")
        printed.append(f"$ {line}\n{result.stdout}")
    (workdir / "quickstart.out").write_text("\n".join(printed))
    return workdir


def test_smoke_run_builds_every_output(built: Path) -> None:
    assert_smoke_outputs(built)


def test_quickstart_shows_the_finished_build(built: Path) -> None:
    """Its ssvae-status line says every seed is done, and the report it shows is the build's."""
    printed = (built / "quickstart.out").read_text()
    assert "4 seeds: 4 done, 0 training, 0 interrupted, 0 diverged, 0 not started; " in printed
    assert "nothing left to train" in printed
    assert (built / SMOKE_RESULTS / "report.md").read_text() in printed


def test_ci_installs_as_the_readme_says() -> None:
    """.ci/run's set-up is the quickstart's, line for line: a green CI proves the README's."""
    setup, _ = quickstart()
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert setup == [line for line in ci if line.startswith(("python3 -m venv", "pip install"))]
    assert setup[0].startswith("python3 -m venv")


PACKED = (
    "train_resources={seeds_per_job: 2, threads: 1, gpus: 0, device: cpu, checkpoint_every: 1, "
    "compile: false, tf32: false}",
)


def results(workdir: Path) -> set[str]:
    """What a build made, but its logs (a job of two seeds writes one log for both)."""
    return {
        p.relative_to(workdir).as_posix()
        for p in (workdir / "results").rglob("*")
        if p.is_file() and "logs" not in p.parts
    }


def test_seeds_trained_together_build_the_same_outputs(
    built: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    """seeds_per_job 2: one job per run trains both seeds, and the build holds what a job per
    seed builds (each seed's numbers are its own: tests/test_pack.py). Which seeds share a job
    is how runs are computed: changing it back retrains nothing; a seed's target is built by its
    job, and forcing it reruns that job."""
    workdir = copy_workflow(tmp_path / "wf")
    assert planned_jobs(workdir, mnist_dir, config=PACKED)["train_seeds_1_2"] == len(RUNS)
    # The runs and their table: the figures of a packed build are the SLURM test's.
    summary = f"{SMOKE_RESULTS}/metrics/summary.csv"
    snakemake(workdir, mnist_dir, summary, config=PACKED)
    assert_smoke_runs(workdir, seeds_per_job=2)
    drawn = ("/plots/", "/report.md", "/report.csv")
    assert results(workdir) == {
        path for path in results(built) if not any(d in path for d in drawn)
    }
    assert planned_jobs(workdir, mnist_dir, summary) == {}
    target = f"{SMOKE_RESULTS}/runs/ExactM2/seed2/run.h5"
    forced = planned_jobs(workdir, mnist_dir, target, "--forcerun", target, config=PACKED)
    assert forced == {"train_seeds_1_2": 1}
    (workdir / target).unlink()
    assert planned_jobs(workdir, mnist_dir, target, config=PACKED) == {"train_seeds_1_2": 1}


def test_report_embeds_every_figure_and_matches_the_summary(built: Path) -> None:
    text = (built / SMOKE_RESULTS / "report.md").read_text()
    embedded = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    plots = (built / SMOKE_RESULTS / "plots").glob("*.png")
    figures = sorted(p.relative_to(built / SMOKE_RESULTS).as_posix() for p in plots)
    assert sorted(embedded) == figures
    assert "trained for 2 epochs, the original for 300" in text
    table = pd.read_csv(built / SMOKE_RESULTS / "report.csv")
    summary = pd.read_csv(built / SMOKE_RESULTS / "metrics/summary.csv")
    assert table.run.tolist() == list(RUNS)
    assert table.valid_accuracy_best_mean.tolist() == summary.valid_accuracy_best_mean.tolist()
    assert table.original_valid_accuracy.tolist() == [0.942, 0.771]
    assert table.seeds_complete.tolist() == [2, 2]
    assert (table.wall_seconds_mean > 0).all()


def test_snakemake_report_holds_every_figure_by_category(built: Path, mnist_dir: Path) -> None:
    """The README's snakemake --report command for the smoke build: each figure and table, in
    the figure table's categories, with the run as subcategory of per-run figures."""
    (command,) = [c for c in readme_commands() if "--report" in c and SMOKE in c]
    program, *args = shlex.split(command)
    result = subprocess.run(
        [program, *args, "--config", f"mnist_sources=[{mnist_dir}]"],
        cwd=built,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(built / SMOKE_RESULTS / "snakemake_report.zip") as archive:
        names = archive.namelist()
        held = {Path(name).name for name in names if "/data/raw/" in name}
        (page,) = [name for name in names if name.count("/") == 1 and name.endswith(".html")]
        html = archive.read(page).decode()
    plots = {p.name for p in (built / SMOKE_RESULTS / "plots").glob("*.png")}
    assert held == plots | {"report.md", "report.csv", "summary.csv"}
    for category in {figure.category for figure in FIGURES}:
        assert category in html
    assert "ExactM2" in html  # the subcategory of ExactM2's per-run figures
    assert BY_STEM["samples"].caption.split(":")[0] in html


def test_second_run_does_nothing(built: Path, mnist_dir: Path) -> None:
    before = mtimes(built)
    result = snakemake(built, mnist_dir)
    assert "Nothing to be done" in result.stdout + result.stderr
    assert mtimes(built) == before


def test_editing_plot_code_rerenders_without_retraining(built: Path, mnist_dir: Path) -> None:
    plot_code = built / "src/ssvae/plots.py"
    plot_code.write_text(plot_code.read_text() + "\n# an edit to the figure code\n")
    assert planned_jobs(built, mnist_dir) == {
        "plot_comparison": 4,
        "plot_per_run": 3,
        "report": 1,
        "all": 1,
    }
    before = mtimes(built)
    snakemake(built, mnist_dir)
    changed = {p for p, t in mtimes(built).items() if before.get(p) != t}
    results = built / SMOKE_RESULTS
    rerendered = {p.relative_to(results).as_posix() for p in changed if "logs" not in p.parts}
    assert rerendered == {
        *(p.relative_to(results).as_posix() for p in (results / "plots").glob("*")),
        "report.md",
        "report.csv",
    }


def test_forcing_one_seed_reruns_only_that_seed(built: Path, mnist_dir: Path) -> None:
    target = f"{SMOKE_RESULTS}/runs/ExactM2/seed1/run.h5"
    assert planned_jobs(built, mnist_dir, target, "--forcerun", "train") == {"train": 1}
    before = mtimes(built)
    snakemake(built, mnist_dir, target, "--forcerun", "train")
    changed = {p for p, t in mtimes(built).items() if before.get(p) != t}
    assert run_file(built, "ExactM2", 1) in changed
    assert "epoch   2/2" in last_attempt(built, "ExactM2", 1)  # trained, not taken from the store
    other_runs = {run_file(built, run, seed) for run in RUNS for seed in SEEDS}
    assert not (changed & (other_runs - {run_file(built, "ExactM2", 1)}))
    # The comparison then re-aggregates and re-renders, and trains nothing else; the per-run
    # figures are of seed 2 and stay.
    assert planned_jobs(built, mnist_dir) == {
        "aggregate_metrics": 1,
        "plot_comparison": 4,
        "report": 1,
        "all": 1,
    }


def test_one_seed_target_needs_only_its_own_jobs(tmp_path: Path, mnist_dir: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    target = f"{SMOKE_RESULTS}/runs/ExactM2/seed3/run.h5"
    assert planned_jobs(workdir, mnist_dir, target) == {
        "prepare_mnist": 1,
        "labeled_split": 1,
        "train": 1,
    }


@pytest.mark.parametrize(
    ("override", "named"),
    [
        # Through snakemake: a list typed from the command line, a model's own check, and a
        # check of the Snakefile's own; every case is checked in-process in test_workflow_config.
        ("seeds=[1,-2]", "seeds.1"),
        ("runs={ExactM2: {params: {kl_factor: .inf}}}", "runs.ExactM2.params.kl_factor = inf"),
        ("reference_run=M3", "reference_run = 'M3': not a run defined in runs"),
        ("sedes=[1]", "sedes = ['1']: not a known key (known: results_dir, mnist_sources, seeds"),
    ],
    ids=lambda value: value if "=" in value else "",
)
def test_invalid_config_stops_before_any_job(
    tmp_path: Path, mnist_dir: Path, override: str, named: str
) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    result = snakemake(workdir, mnist_dir, config=(override,), check=False)
    assert result.returncode != 0
    [error] = error_lines(result.stderr)
    assert error.startswith("invalid config: ") and named in error
    assert not (workdir / "results").exists()


def error_lines(stderr: str) -> list[str]:
    """What snakemake printed on stderr but its notes on where its settings came from."""
    notes = ("Using workflow specific profile", "Config file config.yaml is extended")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(notes)]


def test_target_of_an_undefined_run_is_named_with_the_defined_ones(
    tmp_path: Path, mnist_dir: Path
) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    target = f"{SMOKE_RESULTS}/runs/ExactM3/seed1/run.h5"
    result = snakemake(workdir, mnist_dir, target, check=False)
    assert result.returncode != 0
    defined = ", ".join(yaml.safe_load((workdir / "config.yaml").read_text())["runs"])
    # After snakemake's banner, the line alone: no exception's name, no traceback.
    *banner, error = error_lines(result.stderr)
    assert error == f"{target}: no run 'ExactM3' is defined in runs (defined: {defined})"
    assert not [line for line in banner if "Exception" in line or "File " in line]
    assert not (workdir / "results").exists()


def test_target_of_an_unconfigured_label_count_is_named_with_the_configured_ones(
    tmp_path: Path, mnist_dir: Path
) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    target = f"{SMOKE_RESULTS}/labels_per_class600/runs/MLP/seed1/run.h5"
    result = snakemake(
        workdir, mnist_dir, target, config=("labels_per_class=[10,60]",), check=False
    )
    assert result.returncode != 0
    *banner, error = error_lines(result.stderr)
    assert error == (
        f"{target}: labels_per_class 600 is not configured (labels_per_class: [10, 60]); add it "
        f"to labels_per_class in the config, or with --config 'labels_per_class=[...]'"
    )
    assert not [line for line in banner if "Exception" in line or "File " in line]
    # The original's count has no directory of its own: the line says where it is built.
    original = f"{SMOKE_RESULTS}/labels_per_class10/report.md"
    result = snakemake(workdir, mnist_dir, original, check=False)
    assert error_lines(result.stderr)[-1] == (
        f"{original}: the original's count is built in {SMOKE_RESULTS}/report.md"
    )
    assert not (workdir / "results").exists()


def test_full_comparison_plans_ninety_training_jobs_without_torch(tmp_path: Path) -> None:
    """Planning needs names, paths and settings, never tensors: it runs where torch cannot be
    imported (and so never pays for importing it)."""
    workdir = copy_workflow(tmp_path / "wf")
    no_torch = tmp_path / "no_torch" / "torch"
    no_torch.mkdir(parents=True)
    (no_torch / "__init__.py").write_text("raise ImportError('torch imported while planning')\n")
    pythonpath = os.pathsep.join(filter(None, [str(no_torch.parent), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        ["snakemake", "--dry-run", "--cores", "4"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env=os.environ | {"PYTHONPATH": pythonpath},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^train\s+90$", result.stdout, flags=re.MULTILINE)


def test_smoke_preset_can_name_any_run(tmp_path: Path, mnist_dir: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    every_run = yaml.safe_load((workdir / "config.yaml").read_text())["compare"]
    chosen = f"compare=[{','.join(every_run)}]"
    jobs = planned_jobs(workdir, mnist_dir, config=(chosen,))
    assert jobs["train"] == len(every_run) * len(SEEDS)


def test_how_a_run_is_computed_retrains_nothing(built: Path, mnist_dir: Path) -> None:
    """Device, compile, TF32, threads, checkpoints and seeds per job are provenance, and 2 is
    2.0; a value that changes what a run computes retrains it."""
    snakemake(built, mnist_dir)  # up to date after the tests before
    compute = "train_resources={threads: 2, gpus: 1, device: auto, checkpoint_every: 3, "
    compute += "compile: auto, tf32: true, seeds_per_job: 2}"
    assert planned_jobs(built, mnist_dir, config=(compute,)) == {}
    as_int = "runs={ExactM2: {params: {kl_factor: 2}}}"
    assert planned_jobs(built, mnist_dir, config=(as_int,)) == {}
    other = "runs={ExactM2: {params: {kl_factor: 1}}}"
    assert planned_jobs(built, mnist_dir, config=(other,))["train"] == len(SEEDS)


def test_a_changed_source_list_deletes_nothing_and_builds_what_is_asked(
    built: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    raw = {p: p.stat().st_mtime_ns for p in (built / "results/data").rglob("*") if p.is_file()}
    offline = (f"mnist_sources=[{tmp_path / 'unreachable'}]",)
    assert planned_jobs(built, mnist_dir, config=offline) == {}
    # A seed the preset does not name: its split and training, nothing upstream.
    target = f"{SMOKE_RESULTS}/runs/MLP/seed7/run.h5"
    assert planned_jobs(built, mnist_dir, target, config=offline) == {
        "labeled_split": 1,
        "train": 1,
    }
    snakemake(built, mnist_dir, target, config=offline)
    assert (built / target).exists()
    assert {p: p.stat().st_mtime_ns for p in raw} == raw


def test_prepared_data_rebuilt_neither_retrains_nor_skips_a_requested_target(
    built: Path, mnist_dir: Path
) -> None:
    """The prepared arrays are identified by content: rebuilding them retrains nothing, and a
    target asked for with them is built (snakemake 9 can skip jobs downstream of ancient())."""
    (built / "results/data/mnist.npz").unlink()
    target = f"{SMOKE_RESULTS}/runs/MLP/seed8/run.h5"
    snakemake(built, mnist_dir, target)
    assert (built / target).exists()
    assert planned_jobs(built, mnist_dir) == {}


def test_snakemake_interrupted_as_a_job_finishes_loses_no_training(
    tmp_path: Path, mnist_dir: Path
) -> None:
    """SIGINT to snakemake alone lets the running job finish, then marks its run file incomplete;
    the rerun gets the finished run back without training it again."""
    workdir = copy_workflow(tmp_path / "wf")
    target = f"{SMOKE_RESULTS}/runs/MLP/seed1/run.h5"
    longer = ("steps_per_epoch=40",)
    command = [
        "snakemake", target, "--cores", "2", "--configfile", SMOKE,
        "--config", f"mnist_sources=[{mnist_dir}]", *longer,
    ]  # fmt: skip
    log = workdir / SMOKE_RESULTS / "logs/train/MLP/seed1.log"
    process = subprocess.Popen(
        command,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while not (log.exists() and "epoch   0/2" in log.read_text()):
        assert process.poll() is None, "snakemake ended before training started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=HANG_GUARD_S) != 0
    assert "epoch   2/2" in log.read_text()  # the job finished all the same
    still_incomplete = snakemake(workdir, mnist_dir, target, config=longer, check=False)
    assert "IncompleteFilesException" in still_incomplete.stderr

    snakemake(workdir, mnist_dir, target, "--rerun-incomplete", config=longer)
    assert "taken from the result store" in log.read_text()
    assert "epoch" not in log.read_text()
    assert (workdir / target).exists()
    assert planned_jobs(workdir, mnist_dir, target, config=longer) == {}
    # The interrupted call's epochs are still in the attempts log.
    assert "epoch   2/2" in (workdir / target).with_name("run.attempts.log").read_text()


def readme_commands() -> list[str]:
    """Every snakemake command the README shows, in code blocks or inline."""
    text = (REPO / "README.md").read_text()
    inline = re.findall(r"`(snakemake [^`]+)`", text)
    blocks = re.findall(r"^    (snakemake .+?)(?:\s+#.*)?$", text, flags=re.MULTILINE)
    return sorted(set(inline + blocks))


def planning_commands() -> list[str]:
    """The README's commands that build or plan, which a dry run checks; --report reads what was
    built, and the smoke report command runs on the smoke build (above)."""
    return [command for command in readme_commands() if "--report" not in command]


@pytest.fixture(scope="module")
def readme_workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("readme") / "wf")


@pytest.mark.parametrize("command", planning_commands())
def test_every_readme_command_works_as_written(command: str, readme_workdir: Path) -> None:
    program, *args = shlex.split(command)
    result = subprocess.run(
        [program, "--dry-run", *args],
        cwd=readme_workdir,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_no_reachable_source_is_said_on_the_console(tmp_path: Path, mnist_dir: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    offline = (f"mnist_sources=[{tmp_path / 'unreachable'}]",)
    result = snakemake(workdir, mnist_dir, "results/data/mnist.npz", config=offline, check=False)
    assert result.returncode != 0
    assert "point mnist_sources at a directory" in result.stdout + result.stderr
    assert not (workdir / "results/data/mnist.npz").exists()


def overwrite_middle(path: Path, size: int = 2000) -> None:
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(size))


def stored(workdir: Path, run: str, seed: int) -> list[Path]:
    return sorted((workdir / SMOKE_RESULTS / "store" / run / f"seed{seed}").glob("*.h5"))


def test_force_retrains_inside_and_outside_the_seeds_also_after_a_failed_call(
    built: Path, mnist_dir: Path
) -> None:
    """A forced training job trains anew, whatever the config lists and however the last call
    ended: the result store stands in only where no retrain was asked for."""
    outside = f"{SMOKE_RESULTS}/runs/MLP/seed3/run.h5"
    failing = "results/splits/seed999999999.json"  # beyond the seeds NumPy takes
    failed = snakemake(built, mnist_dir, outside, failing, "--keep-going", check=False)
    assert failed.returncode != 0
    assert "epoch   2/2" in last_attempt(built, "MLP", 3)

    snakemake(built, mnist_dir, outside, "--forcerun", outside)
    assert "epoch   2/2" in last_attempt(built, "MLP", 3)
    assert "result store" not in last_attempt(built, "MLP", 3)
    inside = str(run_file(built, "MLP", 1).relative_to(built))
    snakemake(built, mnist_dir, inside, "--forcerun", "train")
    assert "epoch   2/2" in last_attempt(built, "MLP", 1)
    # Each retrain replaced the stored result of its computation; no request is left.
    assert len(stored(built, "MLP", 1)) == len(stored(built, "MLP", 3)) == 1
    assert not list((built / SMOKE_RESULTS / "runs").rglob("*.retrain"))


def test_a_damaged_run_file_or_split_is_never_delivered(built: Path, mnist_dir: Path) -> None:
    target = f"{SMOKE_RESULTS}/runs/MLP/seed4/run.h5"
    snakemake(built, mnist_dir, target)
    run = built / target
    overwrite_middle(run)
    snakemake(built, mnist_dir, target, "--forcerun", target)
    assert "epoch   2/2" in last_attempt(built, "MLP", 4)
    runfile.read_history(run)  # sound

    overwrite_middle(run)
    run.unlink()
    snakemake(built, mnist_dir, target)
    assert "taken from the result store" in last_attempt(built, "MLP", 4)
    assert run.read_bytes() == stored(built, "MLP", 4)[0].read_bytes()
    runfile.read_history(run)

    (stored_run,) = stored(built, "MLP", 4)
    overwrite_middle(stored_run)
    run.unlink()
    snakemake(built, mnist_dir, target)
    assert f"{stored_run.relative_to(built)}: damaged" in last_attempt(built, "MLP", 4)
    assert "epoch   2/2" in last_attempt(built, "MLP", 4)
    runfile.read_history(run)

    # A split whose indices were changed is still valid JSON; its digest tells.
    split = built / "results/splits/seed4.json"
    content = json.loads(split.read_text())
    content["indices"][0] += 1
    split.write_text(json.dumps(content))
    result = snakemake(built, mnist_dir, target, "--forcerun", target, check=False)
    assert result.returncode != 0
    assert "results/splits/seed4.json: damaged" in result.stdout + result.stderr
    assert not run.exists()
    split.unlink()  # rebuilt when next asked for


def test_a_regenerated_input_retrains_nothing(built: Path, mnist_dir: Path) -> None:
    """Rebuilt with the same content, a split and the prepared arrays make snakemake run the
    finished runs' jobs again; each takes its run file from the store, byte for byte."""
    snakemake(built, mnist_dir)
    before = {
        (run, seed): run_file(built, run, seed).read_bytes() for run in RUNS for seed in SEEDS
    }
    (built / "results/splits/seed1.json").unlink()
    (built / "results/data/mnist.npz").unlink()
    added = ("runs={MLP_b: {label: MLP_b, model: MLP}}", "compare=[ExactM2,MLP,MLP_b]")
    assert planned_jobs(built, mnist_dir, config=added)["train"] == 6
    run_files = [
        str(run_file(built, run, seed).relative_to(built))
        for run in (*RUNS, "MLP_b")
        for seed in SEEDS
    ]  # the run files alone: figures and report are not what this test is about
    snakemake(built, mnist_dir, *run_files, config=added)
    for (run, seed), content in before.items():
        assert run_file(built, run, seed).read_bytes() == content
        assert "taken from the result store" in last_attempt(built, run, seed)
        assert "epoch" not in last_attempt(built, run, seed)
    for seed in SEEDS:
        assert "epoch   2/2" in last_attempt(built, "MLP_b", seed)


def test_settings_changed_and_changed_back_retrain_nothing(built: Path, mnist_dir: Path) -> None:
    only_mlp = ("compare=[MLP]",)
    targets = [str(run_file(built, "MLP", seed).relative_to(built)) for seed in SEEDS]
    snakemake(built, mnist_dir, *targets, config=only_mlp)
    before = {seed: run_file(built, "MLP", seed).read_bytes() for seed in SEEDS}
    snakemake(built, mnist_dir, *targets, config=(*only_mlp, "steps_per_epoch=6"))
    assert all("epoch   2/2" in last_attempt(built, "MLP", seed) for seed in SEEDS)
    snakemake(built, mnist_dir, *targets, config=only_mlp)
    for seed in SEEDS:
        assert "taken from the result store" in last_attempt(built, "MLP", seed)
        assert run_file(built, "MLP", seed).read_bytes() == before[seed]


def test_a_preset_never_touches_another_configurations_results(
    built: Path, mnist_dir: Path
) -> None:
    """A longer build, then the smoke preset (doing work), then the longer build again: every
    file of the longer build is as it was, and its last call plans nothing."""
    longer = [
        "snakemake", "--cores", "2", "--config", f"mnist_sources=[{mnist_dir}]",
        "compare=[MLP]", "seeds=[1]", "epochs=1", "steps_per_epoch=6", "eval_every=1",
        "train_resources={threads: 1, gpus: 0, device: cpu, checkpoint_every: 1, "
        "compile: false, tf32: false, seeds_per_job: 1}",
    ]  # fmt: skip

    def build_longer() -> subprocess.CompletedProcess:
        result = subprocess.run(
            longer, cwd=built, capture_output=True, text=True, timeout=HANG_GUARD_S
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    build_longer()
    longer_files = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for p in (built / "results").rglob("*")
        if p.is_file() and (built / SMOKE_RESULTS) not in p.parents
    }
    assert built / "results/runs/MLP/seed1/run.h5" in longer_files
    smoke_run = str(run_file(built, "MLP", 1).relative_to(built))
    snakemake(built, mnist_dir, "--forcerun", smoke_run)
    assert "epoch   2/2" in last_attempt(built, "MLP", 1)

    again = build_longer()
    assert "Nothing to be done" in again.stdout + again.stderr
    for path, (mtime, content) in longer_files.items():
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, content), path


def test_a_label_count_added_trains_only_its_own_jobs(
    built: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    """labels_per_class [1, 10] on the 100-label smoke build: only the (run, seed) jobs at 1
    label a class train; nothing of the 100-label build is retrained, moved or rewritten. The
    new count has its splits, runs and table under its own paths, and the figure across label
    counts is drawn; one (run, seed, k) target reruns alone."""
    workdir = tmp_path / "wf"
    shutil.copytree(built, workdir, symlinks=True)
    snakemake(workdir, mnist_dir)  # the 100-label build as the smoke preset makes it
    before = {path: t for path, t in mtimes(workdir).items() if "logs" not in path.parts}
    axis = ("labels_per_class=[1,10]",)
    planned = planned_jobs(workdir, mnist_dir, config=axis)
    assert planned["train"] == len(RUNS) * len(SEEDS)
    assert planned["labeled_split"] == len(SEEDS)
    # The new count's runs and table, and the figure across counts; its own figures and
    # report are drawn by the rules of every count (tests above, tests/test_report.py).
    one_count = f"{SMOKE_RESULTS}/labels_per_class1/metrics/summary.csv"
    across = f"{SMOKE_RESULTS}/plots/accuracy_vs_labels.png"
    snakemake(workdir, mnist_dir, one_count, across, config=axis)
    assert {path: t for path, t in mtimes(workdir).items() if path in before} == before

    one = workdir / SMOKE_RESULTS / "labels_per_class1"
    for seed in SEEDS:
        split = json.loads(
            (workdir / f"results/splits/labels_per_class1/seed{seed}.json").read_text()
        )
        assert split["labels_per_class"] == 1 and len(split["indices"]) == 10
        for run in RUNS:
            run_file = one / f"runs/{run}/seed{seed}/run.h5"
            assert runfile.read_attrs(run_file)["labels_per_class"] == 1
    summary = pd.read_csv(one / "metrics/summary.csv")
    assert summary.labels_per_class.tolist() == [1, 1]
    assert summary.set_index("run").test_accuracy_diff_mean.notna().tolist() == [False, True]
    figure = workdir / SMOKE_RESULTS / "plots/accuracy_vs_labels"
    assert figure.with_suffix(".png").is_file() and figure.with_suffix(".pdf").is_file()

    target = f"{SMOKE_RESULTS}/labels_per_class1/runs/MLP/seed2/run.h5"
    forced = planned_jobs(workdir, mnist_dir, target, "--forcerun", target, config=axis)
    assert forced == {"train": 1}
