"""Outputs that cannot be written: refused before training, or (a full disk) one line naming the
file, with the last good checkpoint kept. Real filesystems: small tmpfs mounts (needs root)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from ssvae import checkpoint, data
from ssvae.splits import write_split

SEED = 5
RUN = {"run": "disk", "model": "MLP", "seed": SEED, "epochs": 3, "steps_per_epoch": 2}
RUN |= {"batch_size": 20}


@pytest.fixture(scope="module")
def split(small_mnist: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("split") / "split.json"
    write_split(data.load(small_mnist)["train_y"], SEED, path)
    return path


@pytest.fixture
def mount_point(tmp_path: Path):
    """A directory to mount a tmpfs on (`mount(options)`), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "disk"
    point.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        remount = ["-o", f"remount,{options}"] if mounted else ["-o", options]
        subprocess.run(["mount", "-t", "tmpfs", *remount, "tmpfs", str(point)], check=True)
        mounted.append(options)
        return point

    yield mount
    if mounted:
        subprocess.run(["umount", str(point)], check=True)


# What a trainer keeps beside a run file from its first moment: its lock and every attempt's log.
SIDE_FILES = ["run.attempts.log", "run.lock"]


def train(small_mnist: Path, split: Path, out: Path, *options: str):
    command = [
        "ssvae-train", "--data", str(small_mnist), "--split", str(split), "--out", str(out),
        "--run-config", json.dumps(RUN), "--device", "cpu", "--threads", "1", *options,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True)


def assert_refused_before_training(result, named: str, cause: str) -> None:
    assert result.returncode == 1
    assert result.stdout == ""  # not even the model was built
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ssvae-train: error: cannot write {named}: {cause}")


def test_a_read_only_directory_is_refused_before_training(
    small_mnist: Path, split: Path, mount_point
) -> None:
    disk = mount_point("ro,size=1m")
    out = disk / "run" / "run.h5"
    result = train(small_mnist, split, out, "--checkpoint", str(out.with_name("checkpoint.pt")))
    assert_refused_before_training(result, str(out), "Read-only file system")


def test_a_directory_where_the_run_file_goes_is_refused_before_training(
    small_mnist: Path, split: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run.h5"
    out.mkdir()
    result = train(small_mnist, split, out)
    assert_refused_before_training(result, str(out), "a directory is in its place")


def test_a_full_disk_keeps_the_last_checkpoint_and_the_rerun_resumes_from_it(
    small_mnist: Path, split: Path, mount_point
) -> None:
    # The MLP's checkpoint (weights and Adam's two moments) is about 33 MB: the first fits in
    # 48 MB, the next cannot be written beside it.
    disk = mount_point("size=48m")
    out, ckpt = disk / "run.h5", disk / "checkpoint.pt"
    options = ("--checkpoint", str(ckpt), "--checkpoint-every", "1")
    result = train(small_mnist, split, out, *options)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"ssvae-train: error: cannot write {ckpt}: No space left on device"]
    assert checkpoint.read(ckpt, torch.device("cpu"))["next_epoch"] == 1
    written = ["checkpoint.pt", "run.progress.json", *SIDE_FILES]
    assert sorted(p.name for p in disk.iterdir()) == sorted(written)  # no partial

    mount_point("size=256m")  # space freed
    result = train(small_mnist, split, out, *options)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "epoch 1" in result.stdout
    assert out.exists()


def test_a_full_disk_when_the_run_file_is_written_is_one_line(
    small_mnist: Path, split: Path, mount_point
) -> None:
    disk = mount_point("size=8k")  # two pages: less than the 16 kB run file
    out = disk / "run.h5"
    result = train(small_mnist, split, out)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"ssvae-train: error: cannot write {out}: No space left on device"]
    # No partial run file; no progress file either: two pages held only the lock and the log.
    assert sorted(p.name for p in disk.iterdir()) == SIDE_FILES
    assert "ssvae-status will not see where this job stands" in result.stdout
