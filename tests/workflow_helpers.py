"""Shared by the end-to-end tests: a scratch copy of the workflow, the smoke outputs, and what
a figure's files should be."""

import re
import shutil
import struct
from pathlib import Path

import pandas as pd
import yaml

from ssvae import figures, metrics, plots

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("config.yaml", "workflow", "envs", "src")
SMOKE = "workflow/configs/smoke.yaml"
RUNS, SEEDS = ("ExactM2", "MLP"), (1, 2)
# Where the smoke preset writes everything but MNIST and the splits.
SMOKE_RESULTS = yaml.safe_load((REPO / SMOKE).read_text())["results_dir"]
# The size in inches of each comparison figure, and of each per-run figure but the samples grid,
# which is 775 x 1348 px and its margins at one PNG pixel per image pixel.
COMPARISON_SIZES = {
    "multi_seed_accuracy": plots.PANEL,
    "multi_seed_accuracy_loss_valid": plots.TWO_PANELS,
    "multi_seed_accuracy_loss_train": plots.TWO_PANELS,
    "active_dims": plots.PANEL,
}
KL_SIZES = {"KL_Z": plots.HEATMAP, "KL_Z_valid_mean": plots.HEATMAP}
SAMPLES_PIXELS = (839, 1428)


def quickstart(mnist_dir: Path | str = "/path/to/mnist") -> tuple[list[str], list[str]]:
    """The README's quickstart: its set-up lines (what .ci/run runs), and the lines after them
    with the snakemake line in its offline form, MNIST from `mnist_dir`."""
    section = (REPO / "README.md").read_text().split("\n## Quickstart\n")[1].split("\n## ")[0]
    block, offline, _ = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    lines = block.splitlines()
    first_run = next(i for i, line in enumerate(lines) if line.startswith("snakemake"))
    offline = offline.strip()
    assert offline.startswith(lines[first_run] + " --config mnist_sources=")
    offline = offline.replace("/path/to/mnist", str(mnist_dir))
    return lines[:first_run], [offline, *lines[first_run + 1 :]]


def copy_workflow(dest: Path) -> Path:
    dest.mkdir()
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(src, dest / name)
    return dest


def run_file(workdir: Path, run: str, seed: int) -> Path:
    return workdir / f"{SMOKE_RESULTS}/runs/{run}/seed{seed}/run.h5"


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def png_dpi(path: Path) -> int:
    """The resolution a PNG's pHYs chunk gives, in dots per inch."""
    data, at = path.read_bytes(), 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind == b"pHYs":
            x, y, unit = struct.unpack(">IIB", data[at + 8 : at + 17])
            assert unit == 1 and x == y  # square pixels, per metre
            return round(x * 0.0254)
        at += 12 + length  # length, type, data, CRC
    raise AssertionError(f"{path}: no pHYs chunk")


def png_pixels(size_inches: tuple[float, float]) -> tuple[int, int]:
    """The pixel size of a figure of `size_inches` at the figures' PNG resolution."""
    return tuple(round(inches * figures.PNG_DPI) for inches in size_inches)


def is_pdf(path: Path) -> bool:
    return path.read_bytes().startswith(b"%PDF")


def assert_smoke_outputs(built: Path, seeds_per_job: int = 1) -> None:
    """Everything the smoke preset builds is there and looks right; with seeds_per_job 2 its
    two seeds trained together, in one job per run whose log has a line per seed and epoch."""
    assert_smoke_runs(built, seeds_per_job)
    assert_smoke_figures(built)


def assert_smoke_runs(built: Path, seeds_per_job: int = 1) -> None:
    """The smoke preset's splits, run files, training logs and metrics."""
    for seed in SEEDS:
        assert (built / f"results/splits/seed{seed}.json").exists()
        for run in RUNS:
            assert run_file(built, run, seed).exists()
            if seeds_per_job == 1:
                log, line = f"seed{seed}.log", r"^epoch +\d+/2 .*$"
            else:
                log, line = "seeds_1_2.log", rf"^seed {seed}  epoch +\d+/2 .*$"
            log = (built / SMOKE_RESULTS / "logs/train" / run / log).read_text()
            epochs = re.findall(line, log, flags=re.MULTILINE)
            assert len(epochs) == 3
            # Training and evaluation time on every line (a job's time adds up from its log),
            # then the job's time left.
            timing = r" s training +[\d.]+ s evaluation  \d+ (s|min) left$"
            assert all(re.search(timing, line) for line in epochs)
    # The smoke preset checkpoints every epoch; a completed run leaves no checkpoint behind.
    assert not list((built / SMOKE_RESULTS / "runs").rglob("checkpoint.pt"))
    table = metrics.read_table(built / SMOKE_RESULTS / "metrics/metrics.h5")
    assert set(table.run) == set(RUNS)
    assert set(table.seed) == set(SEEDS)
    assert set(table.split) == {"train", "valid", "test"}
    summary = pd.read_csv(built / SMOKE_RESULTS / "metrics/summary.csv")
    assert summary.run.tolist() == list(RUNS)
    assert summary.n_seeds.tolist() == [2, 2]
    assert summary.test_accuracy_mean.between(0, 1).all()


def assert_smoke_figures(built: Path) -> None:
    """The smoke preset's figures: sizes, resolution, the PDFs, colours."""
    plots_dir = built / SMOKE_RESULTS / "plots"
    for stem, size in COMPARISON_SIZES.items():
        assert png_size(plots_dir / f"{stem}.png") == png_pixels(size)
        assert png_dpi(plots_dir / f"{stem}.png") == figures.PNG_DPI
        assert is_pdf(plots_dir / f"{stem}.pdf")
    assert sorted(path.stem for path in plots_dir.glob("*.pdf")) == sorted(COMPARISON_SIZES)
    # Per-run figures of seed 2 for the run with a decoder only.
    assert png_size(plots_dir / "samples_ExactM2_seed2.png") == SAMPLES_PIXELS
    for stem, size in KL_SIZES.items():
        assert png_size(plots_dir / f"{stem}_ExactM2_seed2.png") == png_pixels(size)
    assert not list(plots_dir.glob("*_MLP_seed*.png"))
    # Colours follow the place among the defined runs, not among the compared ones.
    defined = list(yaml.safe_load((built / "config.yaml").read_text())["runs"])
    runs = metrics.read_runs(built / SMOKE_RESULTS / "metrics/metrics.h5")
    assert runs.palette_index.tolist() == [defined.index(run) for run in RUNS]
