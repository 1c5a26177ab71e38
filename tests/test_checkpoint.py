"""Checkpoints: a training process killed (SIGKILL) or told to stop (SIGTERM) mid-run and run again
finishes with exactly the numbers of a run that was never interrupted (on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from run_contents import run_file_contents

from ssvae import checkpoint, data, job, store, train
from ssvae.checkpoint import CheckpointMismatch
from ssvae.config import TrainConfig
from ssvae.io import hold_lock
from ssvae.loop import Preempted
from ssvae.splits import write_split

SEED = 4
# ApproxM2 draws y and z from the RNG at every step: any RNG state not restored shows up.
# Ten steps of 100 images make an epoch about a second on this machine's CPU.
RUN = {"run": "resume", "model": "ApproxM2", "seed": SEED, "epochs": 5, "steps_per_epoch": 10}
RUN |= {"eval_every": 2}
POLL_S = 0.02


@pytest.fixture(scope="module")
def split(small_mnist: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("split") / "split.json"
    write_split(data.load(small_mnist)["train_y"], SEED, path)
    return path


def train_command(small_mnist: Path, split: Path, out: Path, *options: str,
                  run: dict = RUN) -> list[str]:  # fmt: skip
    return [
        "ssvae-train", "--data", str(small_mnist), "--split", str(split),
        "--run-config", json.dumps(run), "--out", str(out), "--device", "cpu", "--threads", "1",
        *options,
    ]  # fmt: skip


def assert_same_run(resumed: Path, reference: Path) -> None:
    expected, found = run_file_contents(reference), run_file_contents(resumed)
    assert found.keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_array_equal(found[name], values, err_msg=name)


@pytest.fixture(scope="module")
def reference(small_mnist: Path, split: Path, tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run.h5"
    result = subprocess.run(train_command(small_mnist, split, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    while not condition():
        assert process.poll() is None, f"training ended before {what}"
        time.sleep(POLL_S)


def killed_after_first_checkpoint(command: list[str], ckpt: Path) -> None:
    """Run `command` and SIGKILL it once it has written its first checkpoint."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(ckpt.exists, process, "its first checkpoint")
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_numbers(
    small_mnist: Path, split: Path, reference: Path, tmp_path: Path
) -> None:
    out, ckpt = tmp_path / "run.h5", tmp_path / "checkpoint.pt"
    command = train_command(
        small_mnist, split, out, "--checkpoint", str(ckpt), "--checkpoint-every", "2"
    )
    killed_after_first_checkpoint(command, ckpt)
    assert not out.exists()
    assert checkpoint.read(ckpt, torch.device("cpu"))["next_epoch"] == 2  # epochs 0, 1 are kept

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "epoch 2" in result.stdout
    assert_same_run(out, reference)
    assert not ckpt.exists()  # the run file holds everything now


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_at_the_next_step_and_resumes_exactly(
    small_mnist: Path, split: Path, reference: Path, tmp_path: Path, stop_signal: int
) -> None:
    """SIGTERM is what SLURM sends before a time limit or preemption; SIGINT is Ctrl-C."""
    out, ckpt, log = tmp_path / "run.h5", tmp_path / "checkpoint.pt", tmp_path / "log"
    # No periodic checkpoints: what resumes is the one SIGTERM made.
    command = train_command(
        small_mnist, split, out, "--checkpoint", str(ckpt), "--checkpoint-every", "0"
    )
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.PIPE,
            text=True,
            # A child started with SIGINT ignored (a background job) would never see Ctrl-C.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        wait_for(lambda: "epoch   1/5" in log.read_text(), process, "epoch 1")
        process.send_signal(stop_signal)
        _, stderr = process.communicate()
    assert process.returncode == 1
    assert stderr.count("\n") == 1, stderr  # one line, no KeyboardInterrupt traceback
    assert "checkpoint written to" in stderr and "rerun to resume" in stderr
    assert not out.exists()
    state = checkpoint.read(ckpt, torch.device("cpu"))
    assert state["progress"] is not None  # inside an epoch, at a step boundary
    assert state["next_epoch"] >= 2

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert_same_run(out, reference)


def preempted_checkpoint(small_mnist: Path, split: Path, directory: Path) -> Path:
    """A checkpoint written by a run stopped before its first step."""
    ckpt = directory / "checkpoint.pt"
    with pytest.raises(Preempted, match="checkpoint written to"):
        job.train(
            TrainConfig.from_dict(RUN), small_mnist, split, directory / "run.h5",
            torch.device("cpu"), log=lambda *a, **k: None, checkpoint_path=ckpt,
            stop=lambda: True,
        )  # fmt: skip
    return ckpt


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("settings", "other settings"),
        ("code", "other training code"),
    ],
)
def test_a_checkpoint_of_other_settings_or_code_is_refused(
    small_mnist: Path, split: Path, tmp_path: Path, change: str, named: str
) -> None:
    ckpt = preempted_checkpoint(small_mnist, split, tmp_path)
    cfg = TrainConfig.from_dict(RUN)
    if change == "settings":
        cfg = TrainConfig.from_dict(RUN | {"lr": 1e-3})
    else:
        state = checkpoint.read(ckpt, torch.device("cpu"))
        state["fingerprint"]["code"] = "0" * 64
        checkpoint.save(ckpt, state)
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointMismatch, match=named) as refused:
        job.train(cfg, small_mnist, split, tmp_path / "run.h5", torch.device("cpu"),
              log=lambda *a, **k: None, checkpoint_path=ckpt)  # fmt: skip
    assert str(ckpt) in str(refused.value) and "delete it" in str(refused.value)
    assert ckpt.read_bytes() == before  # refused, not overwritten
    assert not (tmp_path / "run.h5").exists()


def test_cli_refusal_is_one_line(small_mnist: Path, split: Path, tmp_path: Path) -> None:
    ckpt = preempted_checkpoint(small_mnist, split, tmp_path)
    other = RUN | {"epochs": 6}
    command = train_command(small_mnist, split, tmp_path / "m.h5", "--checkpoint", str(ckpt))
    command[command.index("--run-config") + 1] = json.dumps(other)
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssvae-train: error: checkpoint ")


def test_a_completed_run_thrown_away_is_taken_from_the_store_not_retrained(
    small_mnist: Path, split: Path, reference: Path, tmp_path: Path
) -> None:
    """Snakemake interrupted as a job finishes marks its run file incomplete and deletes it
    before the rerun; the result store gives it back, byte for byte, without training."""
    out, ckpt, store_dir = tmp_path / "run.h5", tmp_path / "checkpoint.pt", tmp_path / "store"
    command = train_command(
        small_mnist, split, out, "--checkpoint", str(ckpt), "--store", str(store_dir)
    )
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    assert not ckpt.exists()
    written = out.read_bytes()
    out.unlink()

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "taken from the result store" in result.stdout
    assert "epoch" not in result.stdout  # nothing trained
    assert out.read_bytes() == written
    # Every attempt's lines are kept beside the run file, the job's own log only the last.
    attempts = train.attempts_log_path(out).read_text()
    assert attempts.count("--- attempt started") == 2
    assert "epoch   5/5" in attempts and "taken from the result store" in attempts


def test_the_store_stands_in_only_for_the_same_computation(
    small_mnist: Path, split: Path, tmp_path: Path
) -> None:
    out, store_dir = tmp_path / "run.h5", tmp_path / "store"
    command = train_command(small_mnist, split, out, "--store", str(store_dir))
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    command[command.index("--run-config") + 1] = json.dumps(RUN | {"epochs": 1})

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "taken from the result store" not in result.stdout
    assert h5py.File(out)["train/epoch"][()].tolist() == [0, 1]
    # Changed back: the first computation is still there.
    command[command.index("--run-config") + 1] = json.dumps(RUN)
    result = subprocess.run(command, capture_output=True, text=True)
    assert "taken from the result store" in result.stdout
    assert h5py.File(out)["train/epoch"][()].tolist() == list(range(6))


def test_a_damaged_stored_result_is_named_and_trained_again(
    small_mnist: Path, split: Path, reference: Path, tmp_path: Path
) -> None:
    out, store_dir = tmp_path / "run.h5", tmp_path / "store"
    command = train_command(small_mnist, split, out, "--store", str(store_dir))
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    (entry,) = store_dir.rglob("*.h5")
    overwrite_middle(entry)
    out.unlink()

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{entry}: damaged" in result.stdout
    assert "epoch   5/5" in result.stdout
    assert_same_run(out, reference)
    # The retrained run file is stored again, sound.
    assert store.ResultStore(store_dir).take(entry) == out.read_bytes()


def overwrite_middle(path: Path, size: int = 2000) -> None:
    """Damage a file as a bad disk or a stray write would: bytes in its middle replaced."""
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(size))


def test_a_damaged_checkpoint_is_named_and_training_starts_over(
    small_mnist: Path, split: Path, reference: Path, tmp_path: Path
) -> None:
    out, ckpt = tmp_path / "run.h5", tmp_path / "checkpoint.pt"
    command = train_command(
        small_mnist, split, out, "--checkpoint", str(ckpt), "--checkpoint-every", "2"
    )
    killed_after_first_checkpoint(command, ckpt)
    overwrite_middle(ckpt)

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{ckpt}: damaged" in result.stdout and "from the start" in result.stdout
    assert "resumed" not in result.stdout
    assert_same_run(out, reference)


def test_a_retrain_request_trains_anew_and_resumes_only_its_own_checkpoints(
    small_mnist: Path, split: Path, reference: Path, tmp_path: Path
) -> None:
    """What a forced snakemake job gets: the store and an older checkpoint stand in for nothing,
    a checkpoint written for the request is resumed, and the request ends with the run."""
    out, ckpt, store_dir = tmp_path / "run.h5", tmp_path / "checkpoint.pt", tmp_path / "store"
    options = ("--checkpoint", str(ckpt), "--checkpoint-every", "2", "--store", str(store_dir))
    command = train_command(small_mnist, split, out, *options)
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    # A checkpoint from before the request, as a SIGKILLed earlier attempt leaves it.
    killed_after_first_checkpoint(
        train_command(small_mnist, split, tmp_path / "other.h5", *options[:4]), ckpt
    )
    store.request_retrain(out)
    request = store.pending_retrain(out)

    attempts = train.attempts_log_path(out)

    def last_attempt() -> str:
        return attempts.read_text().split("--- attempt started")[-1]

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: attempts.read_text().count("--- attempt") == 2, process, "its start")
    # After epoch 1 its checkpoint is written for the request.
    wait_for(lambda: "epoch   2/5" in last_attempt(), process, "a checkpoint of the retrain")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert "written before the retrain asked for" in last_attempt()
    assert "epoch   0/5" in last_attempt()
    assert store.pending_retrain(out) == request  # not done yet

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resumed from checkpoint" in result.stdout
    assert "taken from the result store" not in result.stdout
    assert_same_run(out, reference)
    assert store.pending_retrain(out) is None


def test_a_second_trainer_of_the_same_run_file_is_refused(
    small_mnist: Path, split: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run.h5"
    with hold_lock(job.SeedFiles(split, out).lock, "training it"):
        result = subprocess.run(train_command(small_mnist, split, out), capture_output=True,
                                text=True)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"process {os.getpid()} on " in lines[0], result.stderr
    assert f"is already training {out} (it holds {out.with_name('run.lock')})" in lines[0]
    assert not out.exists()


PACK_SEEDS = (SEED, SEED + 1)


@pytest.fixture(scope="module")
def split_of_second_seed(small_mnist: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("split") / "split.json"
    write_split(data.load(small_mnist)["train_y"], PACK_SEEDS[1], path)
    return path


def pack_command(small_mnist: Path, splits: list[Path], directory: Path, *options: str):
    """Both seeds in one job, each with its own run file and checkpoint under directory."""
    outs = [directory / f"seed{seed}" / "run.h5" for seed in PACK_SEEDS]
    checkpoints = [directory / f"seed{seed}" / "checkpoint.pt" for seed in PACK_SEEDS]
    command = [
        "ssvae-train", "--data", str(small_mnist), "--run-config", json.dumps(RUN),
        "--seeds", *map(str, PACK_SEEDS), "--split", *map(str, splits),
        "--out", *map(str, outs), "--checkpoint", *map(str, checkpoints),
        "--device", "cpu", "--threads", "1", *options,
    ]  # fmt: skip
    return command, outs, checkpoints


@pytest.fixture(scope="module")
def pack_reference(small_mnist: Path, split: Path, split_of_second_seed: Path, tmp_path_factory):
    """The pack, never interrupted: each seed's run file."""
    splits = [split, split_of_second_seed]
    command, outs, _ = pack_command(small_mnist, splits, tmp_path_factory.mktemp("pack"))
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return outs


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_pack_killed_or_stopped_resumes_each_seed_exactly(
    small_mnist, split, split_of_second_seed, pack_reference, tmp_path, stop: str
) -> None:
    splits = [split, split_of_second_seed]
    every = "2" if stop == "SIGKILL" else "0"  # SIGTERM writes the checkpoints itself
    command, outs, checkpoints = pack_command(
        small_mnist, splits, tmp_path, "--checkpoint-every", every
    )
    log = tmp_path / "log"
    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.PIPE, text=True)
        if stop == "SIGKILL":
            wait_for(lambda: all(c.exists() for c in checkpoints), process, "its checkpoints")
        else:
            wait_for(lambda: "epoch   1/5" in log.read_text(), process, "epoch 1")
        process.send_signal(getattr(signal, stop))
        _, stderr = process.communicate()
    if stop == "SIGTERM":
        assert process.returncode == 1
        assert all(str(c) in stderr for c in checkpoints), stderr
    assert not any(out.exists() for out in outs)
    assert len({checkpoint.read(c, torch.device("cpu"))["next_epoch"] for c in checkpoints}) == 1

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resumed from checkpoint" in result.stdout
    for out, reference_out in zip(outs, pack_reference, strict=True):
        assert_same_run(out, reference_out)
    assert not any(c.exists() for c in checkpoints)


def test_seeds_at_different_steps_train_one_group_after_another(
    small_mnist, split, split_of_second_seed, reference, tmp_path
) -> None:
    """Seed 4 was stopped alone in epoch 2 (its one-seed job used the same checkpoint file);
    a job of seeds 4 and 5 resumes seed 4 and trains seed 5 from the start, each as it trains
    alone, so each run file is the one-seed job's, exactly."""
    splits = [split, split_of_second_seed]
    command, outs, checkpoints = pack_command(small_mnist, splits, tmp_path)
    alone = train_command(
        small_mnist, split, outs[0], "--checkpoint", str(checkpoints[0]), "--checkpoint-every", "0"
    )
    log = tmp_path / "log"
    with log.open("w") as log_file:
        process = subprocess.Popen(alone, stdout=log_file, stderr=subprocess.DEVNULL)
        wait_for(lambda: "epoch   1/5" in log.read_text(), process, "epoch 1")
        process.send_signal(signal.SIGTERM)
        assert process.wait() == 1
    assert checkpoint.read(checkpoints[0], torch.device("cpu"))["next_epoch"] >= 2
    second_alone = tmp_path / "second_alone.h5"
    second_seed_run = RUN | {"seed": PACK_SEEDS[1]}
    result = subprocess.run(
        train_command(small_mnist, split_of_second_seed, second_alone, run=second_seed_run),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr

    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert_same_run(outs[0], reference)
    assert_same_run(outs[1], second_alone)


def test_the_code_digest_covers_every_models_source() -> None:
    """A job imports its model's module only when it builds the model, after its fingerprint:
    the digest loads every model's module itself, so editing any model changes it."""
    code = (
        "import sys; from ssvae import checkpoint; from ssvae.models import MODELS; "
        "checkpoint.code_digest(); "
        "print(all(f'ssvae.models.{m.module}' in sys.modules for m in MODELS.values()))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr
