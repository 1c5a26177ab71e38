"""Figures: layout of the samples grid, the KL map, PNG sizes, and no training code imported."""

import struct
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from synthetic_runs import synthetic_metrics

from ssvae import figures, metrics, plots, runfile

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
    path = tmp_path / "run.h5"
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


# The samples grid at one pixel per image pixel: 775 x 1348 and its margins.
SINGLE_RUN_FIGURES = {"samples": (839, 1428), "KL_Z": (1296, 360), "KL_Z_valid_mean": (1296, 360)}
COMPARISON_FIGURES = {
    "multi_seed_accuracy": ((648, 432), []),
    "multi_seed_accuracy_loss_valid": ((1296, 432), []),
    "multi_seed_accuracy_loss_train": ((1296, 432), []),
    "active_dims": ((648, 432), ["--threshold", "0.01"]),
}


def test_every_figure_of_the_table_is_drawn_and_tested() -> None:
    assert set(plots.DRAW) == set(figures.BY_STEM)
    assert set(SINGLE_RUN_FIGURES) | set(COMPARISON_FIGURES) == set(figures.BY_STEM)
    assert {stem for stem, figure in figures.BY_STEM.items() if figure.per_run} == set(
        SINGLE_RUN_FIGURES
    )


@pytest.mark.parametrize("figure", SINGLE_RUN_FIGURES)
def test_single_run_figures_are_pngs_of_the_original_size(figure, run_file, tmp_path) -> None:
    out = tmp_path / "plots" / "figure.png"
    plots.main([figure, "--run-file", str(run_file), "--label", "A run", "--out", str(out)])
    assert png_size(out) == SINGLE_RUN_FIGURES[figure]
    assert [p.name for p in out.parent.iterdir()] == ["figure.png"]  # no temporary left


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    return synthetic_metrics(tmp_path)


@pytest.mark.parametrize("figure", COMPARISON_FIGURES)
def test_comparison_figures_are_pngs_of_the_expected_size(figure, synthetic, tmp_path) -> None:
    size, extra = COMPARISON_FIGURES[figure]
    out = tmp_path / "plots" / f"{figure}.png"
    plots.main([figure, "--metrics", str(synthetic), *extra, "--out", str(out)])
    assert png_size(out) == size


def comparison_figures(synthetic: Path) -> dict:
    table = metrics.read_table(synthetic)
    runs = metrics.read_runs(synthetic).sort_values("order")
    return {
        "multi_seed_accuracy": plots.accuracy_figure(table, runs),
        "multi_seed_accuracy_loss_valid": plots.accuracy_loss_figure(table, runs, "valid"),
        "multi_seed_accuracy_loss_train": plots.accuracy_loss_figure(table, runs, "train"),
        "active_dims": plots.active_dims_figure(metrics.active_dims(synthetic, 0.01), runs, 0.01),
    }


def text_boxes(fig) -> list[tuple[str, object]]:
    """Every piece of visible text in the figure, with its box in display pixels; a legend is
    one box."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts if t.get_text()]
    for ax in fig.axes:
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = sorted((low, high))
            texts += [  # tick labels outside the view limits are not drawn
                tick.label1
                for tick in axis.get_major_ticks()
                if tick.label1.get_visible() and low <= tick.get_loc() <= high
            ]
        boxes += [
            (t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text().strip()
        ]
        legend = ax.get_legend()
        if legend is not None:
            boxes.append(("legend", legend.get_window_extent(renderer)))
    return boxes


def test_no_text_overlaps_or_leaves_the_figure(synthetic, run_file) -> None:
    z_stats = runfile.read_arrays(run_file, "z_stats")
    kl_rows = plots.kl_per_dimension(z_stats["mu_last_batch"], z_stats["logcov2_last_batch"])
    epochs = np.arange(0, 301, 10)  # the full run's 31 validations
    figures = comparison_figures(synthetic) | {
        "samples": plots.samples_figure(numbered_samples(), 300, "ExactM2", 2),
        "KL_Z": plots.kl_heatmap_figure(kl_rows.reshape(-1, 50), "GumbelSoftmaxM2 shrp=3.0", 2),
        "KL_Z_valid_mean": plots.kl_mean_heatmap_figure(
            epochs, np.random.default_rng(0).random((31, 50)), "LogisticNormalM2 shrp=3.0", 2
        ),
    }
    for name, fig in figures.items():
        fig.canvas.draw()
        boxes = text_boxes(fig)
        width, height = fig.canvas.get_width_height()
        for text, box in boxes:
            assert box.x0 >= 0 and box.y0 >= 0, f"{name}: {text!r} leaves the figure"
            assert box.x1 <= width and box.y1 <= height, f"{name}: {text!r} leaves the figure"
        for i, (text, box) in enumerate(boxes):
            for other, other_box in boxes[i + 1 :]:
                assert not box.overlaps(other_box), f"{name}: {text!r} overlaps {other!r}"
        plt.close(fig)


def test_a_run_keeps_its_colour_in_every_figure(synthetic) -> None:
    expected = {plots.run_colour(i) for i in (0, 8, 9)}
    assert len(expected) == 3
    for name, fig in comparison_figures(synthetic).items():
        for ax in fig.axes:
            legend_colours = {
                line.get_label().split(": ", 1)[0]: line.get_color()
                for line in ax.get_legend().get_lines()
            }
            # The MLP has no latent space, so no line in the active-dimension figure.
            expected = {"ExactM2": 0, "New run": 9} | ({} if name == "active_dims" else {"MLP": 8})
            assert legend_colours == {run: plots.run_colour(i) for run, i in expected.items()}
        plt.close(fig)


def test_the_defined_runs_have_distinct_colours() -> None:
    colours = [plots.run_colour(i) for i in range(20)]
    assert len(set(colours)) == 20


def test_active_dims_legend_gives_the_last_epoch_of_the_mean(synthetic) -> None:
    runs = metrics.read_runs(synthetic).sort_values("order")
    fig = plots.active_dims_figure(metrics.active_dims(synthetic, 0.01), runs, 0.01)
    legend = fig.axes[0].get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    # ExactM2 seeds end with 5, 7, 9 active dimensions; the New run with 4.
    assert labels == ["ExactM2: 7.0 at epoch 20", "New run: 4.0 at epoch 20"]
    assert legend.get_title().get_text() == "mean over seeds at the last epoch"
    footnote = " ".join(text.get_text() for text in fig.texts)
    assert "not drawn, having no latent space: MLP" in footnote
    plt.close(fig)


def test_accuracy_legend_is_sorted_best_first_with_the_epoch_of_the_value(synthetic) -> None:
    fig = comparison_figures(synthetic)["multi_seed_accuracy"]
    legend = fig.axes[0].get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    # Seed means peak at epoch 10 (ExactM2: 0.92), 0 (MLP: 0.76), 10 (New run: 0.50).
    assert labels == [
        "ExactM2: 0.920 at epoch 10",
        "MLP: 0.760 at epoch 0",
        "New run: 0.500 at epoch 10",
    ]
    assert legend.get_title().get_text() == "highest value of the mean over seeds"
    plt.close(fig)


def test_loss_panels_show_every_curve(synthetic) -> None:
    """No fixed axis cuts a curve off: the log axis spans every run's mean loss."""
    fig = comparison_figures(synthetic)["multi_seed_accuracy_loss_valid"]
    loss_axis = fig.axes[1]
    assert loss_axis.get_yscale() == "log"
    low, high = loss_axis.get_ylim()
    for line in loss_axis.get_lines():
        values = line.get_ydata()
        assert low <= values.min() and values.max() <= high, line.get_label()
    plt.close(fig)


def test_samples_are_drawn_at_one_pixel_per_image_pixel(run_file, tmp_path) -> None:
    """The grid appears in the PNG exactly, unscaled and unblurred, inside the margins."""
    out = tmp_path / "samples.png"
    plots.main(["samples", "--run-file", str(run_file), "--label", "A run", "--out", str(out)])
    grey = (plt.imread(out)[..., 0] * 255).round().astype(np.uint8)
    grid = plots.sample_grid(numbered_samples())
    top, left = plots.SAMPLES_MARGINS["top"], plots.SAMPLES_MARGINS["left"]
    np.testing.assert_array_equal(
        grey[top : top + grid.shape[0], left : left + grid.shape[1]], grid
    )


def test_a_comparison_figure_defaults_to_the_workflows_paths(tmp_path: Path, monkeypatch) -> None:
    """`ssvae-plot multi_seed_accuracy` as the README shows it: from results/metrics/metrics.h5
    to results/plots/multi_seed_accuracy.png, or under --results-dir; a per-run figure needs
    --out."""
    synthetic_metrics(tmp_path)  # tmp_path/results/metrics/metrics.h5
    monkeypatch.chdir(tmp_path)
    plots.main(["multi_seed_accuracy"])
    assert png_size(tmp_path / "results/plots/multi_seed_accuracy.png") == (648, 432)
    (tmp_path / "results").rename(tmp_path / "elsewhere")
    plots.main(["multi_seed_accuracy", "--results-dir", "elsewhere"])
    assert (tmp_path / "elsewhere/plots/multi_seed_accuracy.png").is_file()
    with pytest.raises(SystemExit) as refused:
        plots.main(["samples", "--run-file", "run.h5", "--label", "A"])
    assert refused.value.code == 2
