"""Figures: layout of the samples grid, the KL map, PNG sizes, and no training code imported."""

import ast
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssvae import plots, runfile
from ssvae.models import MODELS, SemiSupervisedVAE

REPO = Path(__file__).resolve().parents[1]


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def numbered_samples() -> np.ndarray:
    """1000 'images', each filled with its own index + 1 (mod 255) so cells are identifiable."""
    return np.repeat(np.arange(1, 1001) % 255 + 1, 784).reshape(1000, 784).astype(np.uint8)


def test_sample_grid_has_the_original_layout() -> None:
    grid = plots.sample_grid(numbered_samples())
    # 25 cells of 28 + 3 px across; 10 blocks of 4 rows of 31 px and 9 gaps of 12 px down.
    assert grid.shape == (10 * 4 * 31 + 9 * 12, 25 * 31)
    for label, index in [(0, 0), (0, 26), (3, 57), (9, 99)]:
        row, col = divmod(index, 25)
        top, left = label * (4 * 31 + 12) + row * 31, col * 31
        cell = grid[top : top + 28, left : left + 28]
        assert (cell == (label * 100 + index + 1) % 255 + 1).all()
        assert (grid[top : top + 28, left + 28 : left + 31] == 0).all()  # the gap to the right


def test_kl_per_dimension_is_the_gaussian_kl() -> None:
    mu, logcov2 = np.array([[0.0, 1.0, -2.0]]), np.array([[0.0, 0.5, -1.0]])
    expected = 0.5 * (np.exp(logcov2) + mu**2 - 1 - logcov2)
    np.testing.assert_allclose(plots.kl_per_dimension(mu, logcov2), expected)
    assert plots.kl_per_dimension(np.zeros(3), np.zeros(3)).tolist() == [0, 0, 0]


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "metrics.h5"
    arrays = {
        "z_stats": {
            "epoch": [0, 10],
            "mu_last_batch": rng.normal(size=(2, 100, 50)),
            "logcov2_last_batch": rng.normal(size=(2, 100, 50)),
            "kl_per_dim_mean": rng.random((2, 50)),
        },
        "samples": {"epoch": [0, 10], "p(x)": np.stack([numbered_samples()] * 2)},
    }
    attrs = {"run": "r", "model": "ExactM2", "seed": 2, "config": {}}
    runfile.write(path, attrs, {"train": {"epoch": [0], "loss": [1.0]}}, arrays)
    return path


@pytest.mark.parametrize(
    ("draw", "size"),
    [(plots.samples_figure, (1152, 1152)), (plots.kl_heatmap_figure, (1296, 360))],
)
def test_single_seed_figures_are_pngs_of_the_original_size(draw, size, run_file, tmp_path) -> None:
    out = tmp_path / "figure.png"
    draw(run_file, "A run", out)
    assert png_size(out) == size
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_figure_code_imports_no_training_code() -> None:
    check = "import sys, ssvae.plots, ssvae.metrics; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_cli_names_the_missing_input(tmp_path: Path) -> None:
    result = subprocess.run(
        ["ssvae-plot", "samples", "--out", str(tmp_path / "x.png")], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "--run-file" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_workflow_knows_which_models_have_no_decoder() -> None:
    source = (REPO / "workflow/rules/common.smk").read_text()
    line = next(x for x in source.splitlines() if x.startswith("MODELS_WITHOUT_DECODER ="))
    declared = ast.literal_eval(line.split("=", 1)[1].strip())
    assert declared == {
        name for name, cls in MODELS.items() if not issubclass(cls, SemiSupervisedVAE)
    }
