"""ssvae-status on a comparison stopped in the middle: real training jobs (ssvae-train, as the
workflow calls it) leave each state behind, and the command names it from their files alone."""

import dataclasses
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from labeled_split import split_file

from ssvae import status
from ssvae.config import run_settings
from ssvae.job import TrainingDiverged, train
from ssvae.models.mlp import MLP
from ssvae.progress import Progress, read_progress
from ssvae.runfile import checkpoint_path, run_file_path

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 600  # a stuck job fails the test instead of stalling CI
SETTINGS = {
    "seeds": [1, 2, 3, 4],
    # Long enough that a job is caught at work: the test stops it after its first epoch.
    "epochs": 40,
    "steps_per_epoch": 5,
    "eval_every": 10,
    "compare": ["MLP", "ExactM2"],
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where snakemake would run: the workflow's config.yaml and a preset beside it."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    preset = SETTINGS | {"results_dir": "results"}
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    return tmp_path


def run_status(workdir: Path, *config: str) -> subprocess.CompletedProcess:
    """ssvae-status on the preset, with `config` overrides."""
    return subprocess.run(
        ["ssvae-status", "--configfile", "preset.yaml", "--config", *config],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def ssvae_status(workdir: Path) -> str:
    result = run_status(workdir, "eval_every=10")
    assert result.returncode == 0, result.stderr
    return result.stdout


def rows(report: str) -> dict[tuple[str, int], str]:
    """(run, seed) -> its state and detail, from ssvae-status's table."""
    found = re.findall(r"^(\w+) +(\d+)  (.+)$", report, flags=re.MULTILINE)
    return {(run, int(seed)): rest.strip() for run, seed, rest in found if run != "run"}


def start_training(workdir: Path, config: dict, data: Path, seed: int) -> subprocess.Popen:
    """ssvae-train for one seed of MLP, as the workflow's rule calls it."""
    out = workdir / run_file_path(config["results_dir"], "MLP", seed)
    command = [
        "ssvae-train", "--data", str(data), "--split", str(split_file(data, workdir, seed)),
        "--run-config", run_settings(config, "MLP", seed).to_json(), "--device", "cpu",
        "--threads", "1", "--checkpoint", str(checkpoint_path(out)), "--checkpoint-every", "0",
        "--out", str(out),
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir
    )


def wait_for(condition, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert process.poll() is None, "the training job ended before the state looked for"
        assert time.monotonic() < deadline, "the training job never got there"
        time.sleep(0.05)


def diverge(config: dict, data: Path, workdir: Path, seed: int, monkeypatch) -> None:
    """Train one seed of MLP whose objective turns non-finite at its third step."""
    steps = itertools.count(1)
    forward = MLP.forward

    def forward_with_nan_at_step_3(self, *args):
        result = forward(self, *args)
        if self.training and next(steps) == 3:
            return dataclasses.replace(result, objective=result.objective * float("nan"))
        return result

    monkeypatch.setattr(MLP, "forward", forward_with_nan_at_step_3)
    out = workdir / run_file_path(config["results_dir"], "MLP", seed)
    with pytest.raises(TrainingDiverged):
        train(run_settings(config, "MLP", seed), data, split_file(data, workdir, seed), out,
              torch.device("cpu"), log=lambda *args, **kwargs: None)  # fmt: skip


def test_each_state_of_a_comparison_stopped_in_the_middle(
    workdir: Path, small_mnist: Path, monkeypatch
) -> None:
    config = status.load_config([workdir / "preset.yaml"], [])
    before = rows(ssvae_status(workdir))
    assert set(before.values()) == {"not started"} and len(before) == 8

    done = start_training(workdir, config, small_mnist, seed=1)
    assert done.wait(timeout=HANG_GUARD_S) == 0
    diverge(config, small_mnist, workdir, 3, monkeypatch)

    job = start_training(workdir, config, small_mnist, seed=2)
    out = workdir / run_file_path(config["results_dir"], "MLP", 2)
    try:
        wait_for(lambda: (p := read_progress(out)) is not None and p.epoch >= 0, job)
        job.send_signal(signal.SIGSTOP)  # at work, and holding still while it is looked at
        training = rows(ssvae_status(workdir))
        job.send_signal(signal.SIGTERM)  # as SLURM before its time limit: checkpoint and stop
        job.send_signal(signal.SIGCONT)
        assert job.wait(timeout=HANG_GUARD_S) != 0
    finally:
        job.kill()
    interrupted = rows(ssvae_status(workdir))

    assert re.fullmatch(r"done +valid acc 0\.\d{4} \(epoch 40\)", training["MLP", 1])
    assert re.fullmatch(
        r"training +epoch \d+/40 done, [\d.]+ s/epoch, valid acc 0\.\d{4} \(epoch \d+\), "
        r"\d+ (s|min) left",
        training["MLP", 2],
    )
    assert training["MLP", 3] == "diverged     at epoch 0, step 3; its epochs in run.diverged.h5"
    assert training["MLP", 4] == "not started"
    assert all(training["ExactM2", seed] == "not started" for seed in SETTINGS["seeds"])
    assert re.fullmatch(r"interrupted +resumable from epoch \d+(, step \d)?", interrupted["MLP", 2])
    assert {key: row for key, row in interrupted.items() if key != ("MLP", 2)} == {
        key: row for key, row in training.items() if key != ("MLP", 2)
    }


def test_time_left_is_the_work_left_shared_among_the_seeds_training(workdir: Path) -> None:
    """Each seed's epochs left at its run's measured pace, divided among the seeds at work;
    runs not timed yet are named, not guessed."""
    statuses = [
        status.SeedStatus("MLP", 1, status.DONE, seconds_per_epoch=1.0),
        status.SeedStatus("MLP", 2, status.TRAINING, epochs_left=2, seconds_per_epoch=3.0),
        status.SeedStatus("MLP", 3, status.INTERRUPTED, epochs_left=1),
        status.SeedStatus("MLP", 4, status.NOT_STARTED, epochs_left=3),
        status.SeedStatus("ExactM2", 1, status.TRAINING, epochs_left=3),
        status.SeedStatus("ExactM2", 2, status.DIVERGED),
    ]
    # MLP's pace is the mean of its measured ones, (1 + 3) / 2 = 2 s; 2 + 1 + 3 epochs left of
    # it, 12 s of work in all, shared by the 2 seeds training.
    assert status.time_left(statuses) == (
        "time left at the present rate (2 seeds training at once): about 6 s "
        "(without runs not timed yet: ExactM2)"
    )
    assert status.time_left(statuses[:1]) == "nothing left to train"
    assert status.time_left(statuses[-2:]) == "time left not known yet: no run has trained an epoch"


def test_a_job_on_another_host_is_gone_when_it_stops_writing(workdir: Path) -> None:
    progress = Progress("MLP", 1, 300, seconds_per_epoch=1000.0, host="elsewhere", updated=0.0)
    assert status.job_alive(progress, now=2999.0)
    assert not status.job_alive(progress, now=3001.0)
    progress.pid, progress.host = os.getpid(), socket.gethostname()
    assert status.job_alive(progress, now=1e12)


def test_config_errors_are_one_line(workdir: Path) -> None:
    result = run_status(workdir, "epochs=-1")
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "ssvae-status: error: invalid config: epochs = -1: -1 is less than the minimum of 0"
    ]
    elsewhere = subprocess.run(
        ["ssvae-status"], cwd=workdir / "..", capture_output=True, text=True, timeout=60
    )
    assert elsewhere.stderr.startswith("ssvae-status: error: config.yaml: cannot be read")


def test_each_label_count_has_its_rows(workdir: Path) -> None:
    result = run_status(workdir, "labels_per_class=[1,10]")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "results: 2 runs x 4 seeds x 2 label counts, epochs 0..40"
    assert lines[1].split() == ["labels", "run", "seed", "state", "detail"]
    rows = [line.split() for line in lines[2:-1]]
    assert [(row[0], row[1], row[2]) for row in rows[:2]] == [
        ("10", "MLP", "1"),
        ("10", "MLP", "2"),
    ]
    assert sorted({row[0] for row in rows}) == ["10", "100"] and len(rows) == 16
    assert lines[-1].startswith("16 seeds: 0 done")


def test_seeds_trained_together_share_their_jobs_epoch_time() -> None:
    """Two seeds of MLP in one job at 4 s an epoch: 2 s a seed-epoch, and one job at work."""
    statuses = [
        status.SeedStatus("MLP", 1, status.TRAINING, "", 10, seconds_per_epoch=4.0, seeds_in_job=2),
        status.SeedStatus("MLP", 2, status.TRAINING, "", 10, seconds_per_epoch=4.0, seeds_in_job=2),
        status.SeedStatus("MLP", 3, status.NOT_STARTED, "", 10),
    ]
    # 3 seeds x 10 epochs x 2 s, by one job.
    assert status.time_left(statuses) == (
        "time left at the present rate (2 seeds training at once): about 1 min"
    )


def test_a_retrain_asked_for_and_a_diverged_seed_retried(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    out.write_bytes(b"a finished run file")
    (tmp_path / "run.retrain").write_text("request-1\n")
    asked = status.seed_status(out, "MLP", 1, 40, now=0.0)
    assert (asked.state, asked.epochs_left) == (status.NOT_STARTED, 41)
    assert asked.detail == "a retrain is asked for: its run file will be replaced"

    out.unlink()
    (tmp_path / "run.retrain").unlink()
    (tmp_path / "run.diverged.h5").write_bytes(b"what it had logged")
    diverged = Progress("MLP", 1, 40, state="diverged", diverged_at="epoch 3, step 7")
    diverged.write(out)
    assert status.seed_status(out, "MLP", 1, 40, now=0.0).detail == (
        "at epoch 3, step 7; its epochs in run.diverged.h5"
    )
    # Trained again after a change, then stopped with a checkpoint: no longer the divergence.
    retried = Progress("MLP", 1, 40, state="interrupted", checkpoint_epoch=12)
    retried.write(out)
    checkpoint_path(out).write_bytes(b"a checkpoint")
    again = status.seed_status(out, "MLP", 1, 40, now=0.0)
    assert (again.state, again.detail, again.epochs_left) == (
        status.INTERRUPTED,
        "resumable from epoch 12",
        29,
    )


def test_a_job_that_fails_leaves_its_seeds_interrupted(
    workdir: Path, small_mnist: Path, monkeypatch
) -> None:
    """An error in training (here at the third step) is said in the progress file: a job on
    another host is not taken for one at work until the file goes stale."""
    config = status.load_config([workdir / "preset.yaml"], [])
    steps = itertools.count(1)
    forward = MLP.forward

    def forward_failing_at_step_3(self, *args):
        if self.training and next(steps) == 3:
            raise RuntimeError("out of memory")
        return forward(self, *args)

    monkeypatch.setattr(MLP, "forward", forward_failing_at_step_3)
    out = workdir / run_file_path(config["results_dir"], "MLP", 1)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(run_settings(config, "MLP", 1), small_mnist, split_file(small_mnist, workdir, 1),
              out, torch.device("cpu"), log=lambda *args, **kwargs: None)  # fmt: skip
    assert read_progress(out).state == "interrupted"
    assert "starts again from epoch 0" in rows(ssvae_status(workdir))["MLP", 1]
