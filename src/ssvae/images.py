"""The images on the training device: MNIST's splits as pixel intensities, each seed's labeled
subset, and the fresh binarisation every use of a batch gets."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssvae import data
from ssvae.config import ConfigError
from ssvae.nn import SeedRandom, bernoulli_draw
from ssvae.splits import labeled_indices


def binarize(x: torch.Tensor, random: SeedRandom) -> torch.Tensor:
    """A fresh Bernoulli draw of every pixel, each time a batch is used (docs/original.md 1.3)."""
    return bernoulli_draw(x, x, random)


def to_pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    # The original's pickle stores k/256 (docs/original.md 1.1). Torch's default float type:
    # float32, unless a test asks for float64.
    return torch.from_numpy(images).to(device=device, dtype=torch.get_default_dtype()) / 256.0


@dataclass
class Images:
    """The splits on the training device: pixel intensities in [0, 1), labels as int64; the
    labeled images per seed, (seeds, labeled, ...)."""

    train_x: torch.Tensor
    labeled_x: torch.Tensor
    labeled_y: torch.Tensor
    valid: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def load_images(arrays: dict[str, np.ndarray], splits: list[dict], device: torch.device) -> Images:
    """The prepared arrays (ssvae.data.load) on the device, with each seed's labeled split (all
    of the same size)."""
    train_x = to_pixels(arrays["train_x"], device)
    for split in splits:
        out_of_range = [i for i in split["indices"] if not 0 <= i < len(train_x)]
        if out_of_range:
            raise ConfigError(
                f"split: labeled index {out_of_range[0]} is outside the {len(train_x)} "
                "training images"
            )
    if len({len(split["indices"]) for split in splits}) > 1:
        raise ConfigError("split: the seeds of a job have labeled splits of different sizes")
    labeled = torch.as_tensor([split["indices"] for split in splits], device=device)
    return Images(
        train_x=train_x,
        labeled_x=train_x[labeled],
        labeled_y=torch.as_tensor(arrays["train_y"], device=device)[labeled],
        valid=(
            to_pixels(arrays["valid_x"], device),
            torch.as_tensor(arrays["valid_y"], device=device),
        ),
        test=(
            to_pixels(arrays["test_x"], device),
            torch.as_tensor(arrays["test_y"], device=device),
        ),
    )


def seed_images(data_path: Path, seed_ids: list[int], device: torch.device) -> Images:
    """The images with the labeled subset each seed draws (ssvae.splits), without split files:
    for measuring a step (ssvae.bench) rather than training a run."""
    arrays = data.load(data_path)
    splits = [{"indices": labeled_indices(arrays["train_y"], seed).tolist()} for seed in seed_ids]
    return load_images(arrays, splits, device)
