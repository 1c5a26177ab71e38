"""What a user can get wrong at every entry point: one line naming the problem, a non-zero exit,
no traceback, and no output left behind."""

import json
from pathlib import Path

import h5py
import pytest
import torch
from synthetic_runs import EXACT, RUNS, write_run

from ssvae import data
from ssvae.splits import content_digest, write_split

SEED = 6
RUN = {"run": "r", "model": "MLP", "seed": SEED, "epochs": 0, "steps_per_epoch": 1}


def assert_one_line(result, prog: str, *named: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for fragment in named:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def split(small_mnist: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("split") / "split.json"
    write_split(data.load(small_mnist)["train_y"], SEED, path)
    return path


def truncated_copy(path: Path, directory: Path) -> Path:
    copy = directory / f"truncated{path.suffix}"
    copy.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return copy


class TestTrain:
    @pytest.fixture
    def train(self, run_console_script, small_mnist: Path, split: Path, tmp_path: Path):
        out = tmp_path / "run.h5"

        def run(*, data_path=small_mnist, split_path=split, run_config=RUN, options=()):
            result = run_console_script(
                "ssvae-train", "--data", str(data_path), "--split", str(split_path),
                "--out", str(out), "--run-config", json.dumps(run_config), "--device", "cpu",
                *options,
            )  # fmt: skip
            assert not out.exists()
            return result

        return run

    def test_missing_required_settings_are_named(self, train) -> None:
        result = train(run_config={})
        assert_one_line(result, "ssvae-train", "run: required setting missing", "model, seed")

    def test_a_missing_split_file(self, train, tmp_path: Path) -> None:
        missing = tmp_path / "no-split.json"
        assert_one_line(train(split_path=missing), "ssvae-train", str(missing), "no such file")

    @pytest.mark.parametrize(
        "content", ["{not json", '{"seed": 6}', '{"seed": 6, "indices": ["a"]}'],
        ids=["malformed", "no-indices", "not-integers"],
    )  # fmt: skip
    def test_a_malformed_split_file(self, train, tmp_path: Path, content: str) -> None:
        bad = tmp_path / "split.json"
        bad.write_text(content)
        assert_one_line(train(split_path=bad), "ssvae-train", str(bad), "not a split file")

    def test_a_split_index_outside_the_training_images(self, train, tmp_path: Path) -> None:
        bad = tmp_path / "split.json"
        split = {"seed": SEED, "labels_per_class": 1, "indices": [0, 10**6]}
        bad.write_text(json.dumps(split | {"sha256": content_digest(split)}))  # sound, but wrong
        assert_one_line(train(split_path=bad), "ssvae-train", "labeled index 1000000")

    def test_a_missing_or_truncated_mnist_file(self, train, small_mnist, tmp_path) -> None:
        missing = tmp_path / "none.npz"
        assert_one_line(train(data_path=missing), "ssvae-train", str(missing), "no such file")
        truncated = truncated_copy(small_mnist, tmp_path)
        assert_one_line(train(data_path=truncated), "ssvae-train", str(truncated))

    @pytest.mark.parametrize("content", ["no-fingerprint", "random-bytes"])
    def test_a_checkpoint_that_is_not_one(self, train, tmp_path: Path, content: str) -> None:
        ckpt = tmp_path / "checkpoint.pt"
        if content == "no-fingerprint":
            torch.save({"model": {}}, ckpt)
        else:
            ckpt.write_bytes(bytes(range(256)) * 64)
        result = train(options=("--checkpoint", str(ckpt)))
        assert_one_line(result, "ssvae-train", f"checkpoint {ckpt}", "delete it")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
    def test_cuda_asked_for_without_cuda(self, train) -> None:
        result = train(options=("--device", "cuda"))
        assert_one_line(result, "ssvae-train", "device: 'cuda'", "no usable CUDA GPU")

    def test_negative_threads_are_refused(self, train) -> None:
        result = train(options=("--threads", "-5"))
        assert result.returncode == 2
        assert "--threads: must be at least 0, not -5" in result.stderr


class TestSplit:
    def test_a_missing_or_truncated_mnist_file(self, run_console_script, small_mnist, tmp_path):
        out = tmp_path / "split.json"
        for bad in (tmp_path / "none.npz", truncated_copy(small_mnist, tmp_path)):
            result = run_console_script(
                "ssvae-split", "--data", str(bad), "--seed", "1", "--out", str(out)
            )
            assert_one_line(result, "ssvae-split", str(bad))
            assert not out.exists()

    def test_a_seed_past_32_bits(self, run_console_script, small_mnist, tmp_path) -> None:
        out = tmp_path / "split.json"
        result = run_console_script(
            "ssvae-split", "--data", str(small_mnist), "--seed", "429496730", "--out", str(out)
        )
        assert_one_line(result, "ssvae-split", "--seed must be 0..429496729")
        assert not out.exists()


class TestAggregation:
    @pytest.fixture
    def run_files(self, tmp_path: Path) -> list[Path]:
        return [
            write_run(tmp_path / "runs", "ExactM2", seed, valid, test, 1.0, None)
            for seed, (valid, test) in EXACT.items()
        ]

    def aggregate(self, run_console_script, files, tmp_path: Path):
        out_h5, out_csv = tmp_path / "metrics.h5", tmp_path / "summary.csv"
        result = run_console_script(
            "ssvae-metrics", *map(str, files), "--runs", json.dumps({"ExactM2": RUNS["ExactM2"]}),
            "--out-h5", str(out_h5), "--out-csv", str(out_csv),
        )  # fmt: skip
        assert not out_h5.exists() and not out_csv.exists()
        return result

    @pytest.mark.parametrize("damage", ["empty", "truncated"])
    def test_an_unreadable_run_file(self, run_console_script, run_files, tmp_path, damage):
        bad = run_files[1]
        bad.write_bytes(b"" if damage == "empty" else bad.read_bytes()[:2000])
        result = self.aggregate(run_console_script, run_files, tmp_path)
        assert_one_line(result, "ssvae-metrics", str(bad), "cannot be read as HDF5")

    def test_a_run_file_without_validation(self, run_console_script, run_files, tmp_path) -> None:
        with h5py.File(run_files[0], "a") as f:
            del f["valid"]
        result = self.aggregate(run_console_script, run_files, tmp_path)
        assert_one_line(result, "ssvae-metrics", str(run_files[0]), "no valid group")

    def test_the_same_run_file_twice(self, run_console_script, run_files, tmp_path) -> None:
        result = self.aggregate(run_console_script, [*run_files, run_files[0]], tmp_path)
        assert_one_line(result, "ssvae-metrics", "run ExactM2 seed 1 is given twice")

    def test_figures_and_report_name_an_unreadable_metrics_file(
        self, run_console_script, tmp_path: Path
    ) -> None:
        empty = tmp_path / "metrics.h5"
        empty.write_bytes(b"")
        out = tmp_path / "figure.png"
        result = run_console_script(
            "ssvae-plot", "multi_seed_accuracy", "--metrics", str(empty), "--out", str(out)
        )
        assert_one_line(result, "ssvae-plot", str(empty), "cannot be read as HDF5")
        assert not out.exists()
        md, csv = tmp_path / "report.md", tmp_path / "report.csv"
        result = run_console_script(
            "ssvae-report", "--metrics", str(empty), "--reference", str(tmp_path / "ref.csv"),
            "--threshold", "0.01", "--out-md", str(md), "--out-csv", str(csv),
        )  # fmt: skip
        assert_one_line(result, "ssvae-report", str(empty))
        assert not md.exists() and not csv.exists()
