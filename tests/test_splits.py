"""ssvae.splits: the labeled subset of each seed, drawn as the original draws it (docs/original.md
1.2)."""

import json
from pathlib import Path

import numpy as np
import pytest

from ssvae import data
from ssvae.splits import (
    MAX_LABELS_PER_CLASS,
    labeled_indices,
    labels_per_class_of,
    labels_root,
    labels_suffix,
    read_split,
    split_path,
    write_split,
)

SEEDS = range(1, 11)
SEED_1_FIRST_FIVE = [2121, 34989, 4911, 47275, 49675]


@pytest.fixture(scope="module")
def train_y(prepared_mnist: Path) -> np.ndarray:
    return data.load(prepared_mnist)["train_y"]


def original_draw(train_y: np.ndarray, seed: int, nlabelsperclass: int = 10) -> list[int]:
    """The original's procedure on the legacy global RNG, which is restored afterwards; its
    nlabelsperclass is 10."""
    saved_state = np.random.get_state()
    try:
        np.random.seed(10 * seed)
        drawn = []
        for label in range(10):
            members_of_class = np.nonzero(train_y == label)[0]
            perm = np.arange(len(members_of_class))
            np.random.shuffle(perm)
            drawn.extend(members_of_class[perm[:nlabelsperclass]].tolist())
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


@pytest.mark.parametrize("per_class", [1, 3, 60, 300, MAX_LABELS_PER_CLASS])
@pytest.mark.parametrize("seed", [1, 7])
def test_another_label_count_is_the_original_draw_with_it(
    train_y: np.ndarray, seed: int, per_class: int
) -> None:
    indices = labeled_indices(train_y, seed, per_class)
    assert indices.tolist() == original_draw(train_y, seed, per_class)
    assert train_y[indices].tolist() == np.repeat(np.arange(10), per_class).tolist()


def test_the_most_labels_a_class_is_the_smallest_class(train_y: np.ndarray) -> None:
    assert np.bincount(train_y).min() == MAX_LABELS_PER_CLASS


def test_label_counts_other_than_the_originals_have_their_own_paths() -> None:
    """The original's 10 a class keep today's paths: a 100-label build stays where it is."""
    assert split_path(10, 3) == "results/splits/seed3.json"
    assert split_path(1, 3) == "results/splits/labels_per_class1/seed3.json"
    assert labels_root("results/smoke", 10) == "results/smoke"
    assert labels_root("results/smoke", 60) == "results/smoke/labels_per_class60"
    for k in (1, 10, 60):
        assert labels_per_class_of(labels_suffix(k)) == k


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
