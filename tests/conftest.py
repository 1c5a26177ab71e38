"""Shared fixtures: the offline MNIST copy and the split prepared from it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from labeled_split import split_file

from ssvae import data

REPO_ROOT = Path(__file__).resolve().parent.parent


def _holds_mnist(directory: Path) -> bool:
    return all((directory / f"{name}.gz").is_file() for name in data.MNIST_FILES)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The directory holding the four MNIST .gz files."""
    candidates = [
        Path(os.environ["SSVAE_MNIST_DIR"]) if os.environ.get("SSVAE_MNIST_DIR") else None,
        REPO_ROOT.parent / "shared" / "data" / "mnist",
        Path("/work/shared/data/mnist"),
    ]
    for candidate in candidates:
        if candidate is not None and _holds_mnist(candidate):
            return candidate
    # Fail rather than skip: CI must never pass by silently skipping the data tests.
    looked = ", ".join(
        str(candidate) if candidate is not None else "$SSVAE_MNIST_DIR (unset)"
        for candidate in candidates
    )
    pytest.fail(
        f"MNIST .gz files not found (looked in {looked}); "
        "set SSVAE_MNIST_DIR to the directory holding them",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def prepared_mnist(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .npz written by ssvae.data.prepare from a verified copy of the MNIST files."""
    work_dir = tmp_path_factory.mktemp("prepared_mnist")
    raw_dir = work_dir / "raw"
    data.fetch_all([str(mnist_dir)], raw_dir)
    npz_path = work_dir / "mnist.npz"
    data.prepare(raw_dir, npz_path)
    return npz_path


@pytest.fixture(scope="session")
def run_console_script():
    """Run an installed console script by name, as a user would, and return the finished process."""

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        executable = shutil.which(name)
        if executable is None:
            pytest.fail(f"{name} is not on PATH; pip install -e . first", pytrace=False)
        return subprocess.run([executable, *args], capture_output=True, text=True, timeout=300)

    return run


N_TRAIN, N_EVAL = 1000, 100


@pytest.fixture(scope="session")
def small_mnist(prepared_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared arrays cut to 1,000 training and 100 validation and test images."""
    arrays = data.load(prepared_mnist)
    sizes = {"train": N_TRAIN, "valid": N_EVAL, "test": N_EVAL}
    small = {key: values[: sizes[key.split("_")[0]]] for key, values in arrays.items()}
    path = tmp_path_factory.mktemp("small_mnist") / "mnist.npz"
    data.write_arrays(path, small)
    return path


@pytest.fixture(scope="module")
def small_split(small_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The labeled split of seed SPLIT_SEED on the small arrays."""
    return split_file(small_mnist, tmp_path_factory.mktemp("split"))


@pytest.fixture
def float64_default():
    """Train in float64 (the training code makes its tensors in torch's default float type)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
