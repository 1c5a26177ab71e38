"""The labeled subset of one seed, drawn exactly as the original draws it (docs/original.md 1.2)."""

import json
import sys
from pathlib import Path

import numpy as np

from ssvae import data
from ssvae.cli import entry_point_parser
from ssvae.errors import InputError, exit_on_user_error
from ssvae.io import DamagedFile, sha256, write_atomic

N_CLASSES = 10
MAX_SEED = (2**32 - 1) // 10  # RandomState(10 * seed) takes 32-bit seeds
SPLIT_FORMAT = 2  # 2: the file records the sha256 of its content
ORIGINAL_LABELS_PER_CLASS = 10
# The fewest training images of a class among the 50,000 (digit 5): the most labels a class has.
MAX_LABELS_PER_CLASS = 4506
SPLITS_DIR = "results/splits"  # shared by every configuration
SPLIT_NAME = "seed{seed}.json"  # in SPLITS_DIR plus the label count's suffix
LABEL_COUNT_DIR = "labels_per_class"  # then k: the directory of a count but the original's


def labels_suffix(labels_per_class: int) -> str:
    """What a directory's name gains for a label count: nothing for the original's 10 a class (a
    100-label build stays where it was), "/labels_per_class<k>" for any other."""
    if labels_per_class == ORIGINAL_LABELS_PER_CLASS:
        return ""
    return f"/{LABEL_COUNT_DIR}{labels_per_class}"


def labels_per_class_of(suffix: str) -> int:
    """The label count a suffix of labels_suffix says."""
    return int(suffix.removeprefix(f"/{LABEL_COUNT_DIR}")) if suffix else ORIGINAL_LABELS_PER_CLASS


def labels_root(results_dir: str, labels_per_class: int) -> str:
    """Where a configuration keeps what depends on the label count: its runs, metrics, figures
    and report."""
    return f"{results_dir}{labels_suffix(labels_per_class)}"


def split_path(labels_per_class: int, seed: int) -> str:
    return f"{labels_root(SPLITS_DIR, labels_per_class)}/{SPLIT_NAME.format(seed=seed)}"


def labeled_indices(train_y: np.ndarray, seed: int,
                    per_class: int = ORIGINAL_LABELS_PER_CLASS) -> np.ndarray:  # fmt: skip
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


def write_split(train_y: np.ndarray, seed: int, out_path: Path,
                per_class: int = ORIGINAL_LABELS_PER_CLASS) -> dict:  # fmt: skip
    indices = labeled_indices(train_y, seed, per_class)
    split = {
        "seed": seed,
        "rng_seed": 10 * seed,
        "labels_per_class": per_class,
        "indices": indices.tolist(),
        "labels": train_y[indices].tolist(),
    }
    split["sha256"] = content_digest(split)
    write_atomic(out_path, json.dumps(split).encode())
    return split


def content_digest(split: dict) -> str:
    """sha256 of everything in a split but its recorded digest, in a canonical form."""
    content = {key: value for key, value in split.items() if key != "sha256"}
    return sha256(json.dumps(content, sort_keys=True).encode())


def read_split(path: Path) -> dict:
    """A split file written by `write_split`, its content checked against the digest recorded
    in it; anything else is an InputError naming it."""
    try:
        split = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a split file ({err})") from None
    well_formed = (
        isinstance(split, dict)
        and isinstance(split.get("seed"), int)
        and isinstance(split.get("labels_per_class"), int)
        and isinstance(split.get("indices"), list)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in split["indices"])
    )
    if not well_formed:
        raise InputError(
            f"{path}: not a split file (needs an integer seed, labels_per_class and indices)"
        )
    if "sha256" not in split:
        raise DamagedFile(path, "no recorded digest: written by an earlier ssvae; delete it")
    if split["sha256"] != content_digest(split):
        raise DamagedFile(path, "its content does not match its recorded digest; delete it")
    return split


def main(argv: list[str] | None = None) -> None:
    parser = entry_point_parser(
        "ssvae-split", "Write the labeled subset (indices and labels) of one seed."
    )
    parser.add_argument("--data", type=Path, required=True, help="prepared MNIST .npz")
    parser.add_argument(
        "--seed", type=int, required=True, help=f"0..{MAX_SEED}; NumPy's RandomState(10*seed)"
    )
    parser.add_argument(
        "--labels-per-class",
        type=int,
        default=ORIGINAL_LABELS_PER_CLASS,
        help=f"labeled images a class: 1..{MAX_LABELS_PER_CLASS}",
    )
    parser.add_argument("--out", type=Path, required=True, help="split JSON to write")
    args = parser.parse_args(argv)
    if not 0 <= args.seed <= MAX_SEED:
        sys.exit(
            f"ssvae-split: error: --seed must be 0..{MAX_SEED} (NumPy seeds with 10*seed), "
            f"got {args.seed}"
        )
    if not 1 <= args.labels_per_class <= MAX_LABELS_PER_CLASS:
        sys.exit(
            f"ssvae-split: error: --labels-per-class must be 1..{MAX_LABELS_PER_CLASS} (the "
            f"training images of the smallest class), got {args.labels_per_class}"
        )
    with exit_on_user_error("ssvae-split"):
        train_y = data.load(args.data)["train_y"]
        split = write_split(train_y, args.seed, args.out, args.labels_per_class)
    print(f"wrote {args.out}: {len(split['indices'])} labeled images for seed {args.seed}")


if __name__ == "__main__":
    main()
