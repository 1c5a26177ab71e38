"""ssvae.splits: the labeled subset of each seed, drawn as the original draws it (docs/original.md
1.2)."""

import json
from pathlib import Path

import numpy as np
import pytest

from ssvae import data
from ssvae.splits import labeled_indices, read_split, write_split

SEEDS = range(1, 11)
SEED_1_FIRST_FIVE = [2121, 34989, 4911, 47275, 49675]


@pytest.fixture(scope="module")
def train_y(prepared_mnist: Path) -> np.ndarray:
    return data.load(prepared_mnist)["train_y"]


def original_draw(train_y: np.ndarray, seed: int) -> list[int]:
    """The original's procedure on the legacy global RNG, which is restored afterwards."""
    saved_state = np.random.get_state()
    try:
        np.random.seed(10 * seed)
        drawn = []
        for label in range(10):
            members_of_class = np.nonzero(train_y == label)[0]
            perm = np.arange(len(members_of_class))
            np.random.shuffle(perm)
            drawn.extend(members_of_class[perm[:10]].tolist())
        return drawn
    finally:
        np.random.set_state(saved_state)


@pytest.mark.parametrize("seed", SEEDS)
def test_ten_unique_indices_per_class_grouped_by_class(train_y: np.ndarray, seed: int) -> None:
    indices = labeled_indices(train_y, seed)
    assert indices.shape == (100,)
    assert len(set(indices.tolist())) == 100
    assert indices.min() >= 0
    assert indices.max() < 50_000
    assert train_y[indices].tolist() == np.repeat(np.arange(10), 10).tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_same_seed_gives_same_indices(train_y: np.ndarray, seed: int) -> None:
    np.testing.assert_array_equal(labeled_indices(train_y, seed), labeled_indices(train_y, seed))


def test_different_seeds_give_different_subsets(train_y: np.ndarray) -> None:
    subsets = {frozenset(labeled_indices(train_y, seed).tolist()) for seed in SEEDS}
    assert len(subsets) == len(SEEDS)


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_the_original_draw_on_the_global_rng(train_y: np.ndarray, seed: int) -> None:
    assert labeled_indices(train_y, seed).tolist() == original_draw(train_y, seed)


def test_seed_1_regression_value(train_y: np.ndarray) -> None:
    assert labeled_indices(train_y, 1)[:5].tolist() == SEED_1_FIRST_FIVE


def test_write_split_roundtrips_through_read_split(train_y: np.ndarray, tmp_path: Path) -> None:
    out_path = tmp_path / "splits" / "seed3.json"
    written = write_split(train_y, 3, out_path)
    assert read_split(out_path) == written
    assert written["indices"] == labeled_indices(train_y, 3).tolist()
    assert list(out_path.parent.iterdir()) == [out_path]


def test_split_cli_writes_the_subset_as_json(
    run_console_script, prepared_mnist: Path, train_y: np.ndarray, tmp_path: Path
) -> None:
    out_path = tmp_path / "seed4.json"
    finished = run_console_script(
        "ssvae-split", "--data", str(prepared_mnist), "--seed", "4", "--out", str(out_path)
    )
    assert finished.returncode == 0, finished.stderr
    split = json.loads(out_path.read_text())
    assert {"seed", "rng_seed", "indices", "labels"} <= split.keys()
    assert split["seed"] == 4
    assert split["rng_seed"] == 40
    assert split["indices"] == labeled_indices(train_y, 4).tolist()
    assert split["labels"] == train_y[split["indices"]].tolist()


def test_split_cli_rejects_a_negative_seed(
    run_console_script, prepared_mnist: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "splits"
    out_dir.mkdir()
    finished = run_console_script(
        "ssvae-split", "--data", str(prepared_mnist), "--seed=-1", "--out", str(out_dir / "s.json")
    )
    assert finished.returncode != 0
    error_lines = finished.stderr.splitlines()
    assert len(error_lines) == 1, finished.stderr
    assert error_lines[0].startswith("ssvae-split: error:")
    assert list(out_dir.iterdir()) == []
