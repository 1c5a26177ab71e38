"""What a run file holds, for comparing two runs."""

from pathlib import Path

import h5py
import numpy as np


def run_file_contents(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a run file but the timings, which no two runs share."""
    contents = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                contents.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset) and not name.endswith("duration")
                else None
            )
        )
    return contents
