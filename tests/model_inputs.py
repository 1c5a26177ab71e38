"""Small deterministic float64 inputs shared by the model tests, for a model of one seed:
(1, rows, ...), the leading dimension being the seed's."""

import torch
import torch.nn.functional as F


def binary_images(rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(
        torch.full((1, rows, 784), 0.3, dtype=torch.float64), generator=generator
    )


def labels(rows: int, seed: int) -> torch.Tensor:
    return torch.randint(10, (1, rows), generator=torch.Generator().manual_seed(seed))


def onehot(y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, 10).double()
