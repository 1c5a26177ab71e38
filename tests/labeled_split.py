"""A labeled split file written for the small MNIST arrays."""

from pathlib import Path

from ssvae import data
from ssvae.splits import write_split

SPLIT_SEED = 3


def split_file(small_mnist: Path, directory: Path, seed: int = SPLIT_SEED) -> Path:
    path = directory / f"split_seed{seed}.json"
    write_split(data.load(small_mnist)["train_y"], seed, path)
    return path
