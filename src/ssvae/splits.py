"""The labeled subset of one seed, drawn exactly as the original draws it (spec 1.2)."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ssvae import data
from ssvae.io import atomic_output

N_CLASSES = 10


def labeled_indices(train_y: np.ndarray, seed: int, per_class: int = 10) -> np.ndarray:
    """Indices into the 50,000 training images, grouped by class 0..9.

    The original seeds the legacy global NumPy RNG with 10*seed, then for each class shuffles
    arange(n_c) and keeps the first `per_class` positions; RandomState reproduces that stream.
    """
    rng = np.random.RandomState(10 * seed)
    chosen = []
    for label in range(N_CLASSES):
        of_class = np.flatnonzero(train_y == label)
        order = np.arange(len(of_class))
        rng.shuffle(order)
        chosen.append(of_class[order[:per_class]])
    return np.concatenate(chosen)


def write_split(train_y: np.ndarray, seed: int, out_path: Path, per_class: int = 10) -> dict:
    indices = labeled_indices(train_y, seed, per_class)
    split = {
        "seed": seed,
        "rng_seed": 10 * seed,
        "labels_per_class": per_class,
        "indices": indices.tolist(),
        "labels": train_y[indices].tolist(),
    }
    with atomic_output(out_path) as tmp:
        tmp.write_text(json.dumps(split))
    return split


def read_split(path: Path) -> dict:
    with open(path) as stream:
        return json.load(stream)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ssvae-split", description="Write the labeled subset (indices and labels) of one seed."
    )
    parser.add_argument("--data", type=Path, required=True, help="prepared MNIST .npz")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.seed < 0:
        sys.exit(f"ssvae-split: error: seed must be a non-negative integer, got {args.seed}")
    if not 1 <= args.labels_per_class <= 4000:
        sys.exit(f"ssvae-split: error: labels-per-class out of range: {args.labels_per_class}")
    split = write_split(data.load(args.data)["train_y"], args.seed, args.out, args.labels_per_class)
    print(f"wrote {args.out}: {len(split['indices'])} labeled images for seed {args.seed}")
