"""Figures: layout of the samples grid, the KL maps, labels and legends, the files written
(PNG size and resolution, PDF), and no training code imported."""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, QuadMesh
from synthetic_runs import synthetic_metrics
from workflow_helpers import (
    COMPARISON_SIZES,
    KL_SIZES,
    SAMPLES_PIXELS,
    is_pdf,
    png_dpi,
    png_pixels,
    png_size,
)

from ssvae import figures, metrics, plots, runfile

REPO = Path(__file__).resolve().parents[1]


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


SINGLE_RUN_FIGURES = {"samples": SAMPLES_PIXELS} | {
    stem: png_pixels(size) for stem, size in KL_SIZES.items()
}
COMPARISON_FIGURES = {
    stem: (png_pixels(size), ["--threshold", "0.01"] if stem == "active_dims" else [])
    for stem, size in COMPARISON_SIZES.items()
}


def test_every_figure_of_the_table_is_drawn_and_tested() -> None:
    assert set(plots.DRAW) == set(figures.BY_STEM)
    assert set(SINGLE_RUN_FIGURES) | set(COMPARISON_FIGURES) | {
        figures.LABEL_COUNT_FIGURE.stem
    } == set(figures.BY_STEM)
    assert {stem for stem, figure in figures.BY_STEM.items() if figure.per_run} == set(
        SINGLE_RUN_FIGURES
    )


def test_png_resolution_is_for_print() -> None:
    assert figures.PNG_DPI >= 300


@pytest.mark.parametrize("figure", SINGLE_RUN_FIGURES)
def test_single_run_figures_are_a_png_at_print_resolution(figure, run_file, tmp_path) -> None:
    out = tmp_path / "plots" / "figure.png"
    plots.main([figure, "--run-file", str(run_file), "--label", "A run", "--out", str(out)])
    assert png_size(out) == SINGLE_RUN_FIGURES[figure]
    assert png_dpi(out) == figures.PNG_DPI
    assert [p.name for p in out.parent.iterdir()] == ["figure.png"]  # no temporary, no PDF


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    return synthetic_metrics(tmp_path)


@pytest.mark.parametrize("figure", COMPARISON_FIGURES)
def test_comparison_figures_are_a_png_at_print_resolution_and_a_pdf(
    figure, synthetic, tmp_path
) -> None:
    size, extra = COMPARISON_FIGURES[figure]
    out = tmp_path / "plots" / f"{figure}.png"
    plots.main([figure, "--metrics", str(synthetic), *extra, "--out", str(out)])
    assert png_size(out) == size
    assert png_dpi(out) == figures.PNG_DPI
    assert is_pdf(out.with_suffix(".pdf"))
    assert sorted(p.name for p in out.parent.iterdir()) == [f"{figure}.pdf", f"{figure}.png"]


def test_a_pdf_drawn_twice_is_the_same_file(synthetic, tmp_path) -> None:
    """No creation date in it: rebuilding an unchanged figure gives the same bytes."""
    outs = [tmp_path / f"{name}/multi_seed_accuracy.png" for name in ("one", "two")]
    for out in outs:
        plots.main(["multi_seed_accuracy", "--metrics", str(synthetic), "--out", str(out)])
    pdfs = [out.with_suffix(".pdf").read_bytes() for out in outs]
    assert pdfs[0] == pdfs[1]


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


def every_figure(synthetic: Path) -> dict:
    """Every figure of the table, the per-run ones of a full run's 31 validations."""
    epochs, rng = np.arange(0, 301, 10), np.random.default_rng(0)
    return comparison_figures(synthetic) | {
        "samples": plots.samples_figure(numbered_samples(), 300, "ExactM2", 2),
        "KL_Z": plots.kl_heatmap_figure(
            epochs, rng.random((31, 100, 50)), "GumbelSoftmaxM2 shrp=3.0", 2
        ),
        "KL_Z_valid_mean": plots.kl_mean_heatmap_figure(
            epochs, rng.random((31, 50)), "LogisticNormalM2 shrp=3.0", 2
        ),
    }


def test_no_text_overlaps_or_leaves_the_figure(synthetic) -> None:
    for name, fig in every_figure(synthetic).items():
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


def test_every_drawn_axis_of_every_figure_is_labelled(synthetic) -> None:
    """An axis with tick labels has a label; the samples grid draws no axis, its class blocks
    being labelled by their digits."""
    for name, fig in every_figure(synthetic).items():
        fig.canvas.draw()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis) if ax.axison else ():
                ticks = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
                if ticks:
                    assert axis.label.get_text().strip(), f"{name}: {axis.axis_name} axis"
        plt.close(fig)


def test_the_samples_figure_draws_no_axis() -> None:
    fig = plots.samples_figure(numbered_samples(), 300, "ExactM2", 2)
    assert [ax.axison for ax in fig.axes] == [False]
    plt.close(fig)


def test_legends_cover_no_curve_or_band(synthetic) -> None:
    """Each legend lies outside its axes, where nothing is drawn."""
    for name, fig in comparison_figures(synthetic).items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend().get_window_extent(renderer)
            assert not legend.overlaps(ax.get_window_extent(renderer)), name
        plt.close(fig)


def test_the_loss_axis_says_the_mlp_loss_is_on_another_scale(synthetic) -> None:
    for name in ("multi_seed_accuracy_loss_valid", "multi_seed_accuracy_loss_train"):
        fig = comparison_figures(synthetic)[name]
        label = fig.axes[1].get_ylabel()
        assert "loss" in label and "MLP: cross-entropy alone, on another scale" in label
        plt.close(fig)


def test_kl_maps_use_a_perceptually_uniform_colour_map(synthetic) -> None:
    for name, fig in every_figure(synthetic).items():
        # The map and its colour bar.
        meshes = [c for ax in fig.axes for c in ax.collections if isinstance(c, QuadMesh)]
        expected = {"viridis"} if name.startswith("KL_Z") else set()
        assert {mesh.get_cmap().name for mesh in meshes} == expected, name
        plt.close(fig)


def test_kl_z_marks_where_each_validation_ends_and_labels_it_by_epoch() -> None:
    """Three validations of 100 rows: lines between them at rows 100 and 200, across every z
    dimension; each validation's epoch at its middle."""
    kl = np.random.default_rng(0).random((3, 100, 50))
    fig = plots.kl_heatmap_figure(np.array([0, 10, 20]), kl, "ExactM2", 2)
    ax = fig.axes[0]
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [segment.tolist() for segment in lines.get_segments()] == [
        [[100, 0], [100, 50]],
        [[200, 0], [200, 50]],
    ]
    assert ax.get_xticks().tolist() == [50, 150, 250]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10", "20"]
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
    """The grid appears in the PNG exactly, unscaled and unblurred, inside the margins, at the
    print resolution of every PNG."""
    out = tmp_path / "samples.png"
    plots.main(["samples", "--run-file", str(run_file), "--label", "A run", "--out", str(out)])
    assert png_dpi(out) == figures.PNG_DPI
    grey = (plt.imread(out)[..., 0] * 255).round().astype(np.uint8)
    grid = plots.sample_grid(numbered_samples())
    top, left = plots.SAMPLES_MARGINS["top"], plots.SAMPLES_MARGINS["left"]
    np.testing.assert_array_equal(
        grey[top : top + grid.shape[0], left : left + grid.shape[1]], grid
    )


def test_a_comparison_figure_defaults_to_the_workflows_paths(tmp_path: Path, monkeypatch) -> None:
    """`ssvae-plot multi_seed_accuracy` as the README shows it: from results/metrics/metrics.h5
    to results/plots/multi_seed_accuracy.png and .pdf, the workflow's paths, or under
    --results-dir; a per-run figure needs --out."""
    synthetic_metrics(tmp_path)  # tmp_path/results/metrics/metrics.h5
    monkeypatch.chdir(tmp_path)
    plots.main(["multi_seed_accuracy"])
    for extension in figures.BY_STEM["multi_seed_accuracy"].formats:
        path = figures.comparison_path("results", "multi_seed_accuracy", extension)
        assert (tmp_path / path).is_file()
    assert png_size(tmp_path / "results/plots/multi_seed_accuracy.png") == png_pixels(plots.PANEL)
    assert is_pdf(tmp_path / "results/plots/multi_seed_accuracy.pdf")
    (tmp_path / "results").rename(tmp_path / "elsewhere")
    plots.main(["multi_seed_accuracy", "--results-dir", "elsewhere"])
    assert (tmp_path / "elsewhere/plots/multi_seed_accuracy.png").is_file()
    assert (tmp_path / "elsewhere/plots/multi_seed_accuracy.pdf").is_file()
    with pytest.raises(SystemExit) as refused:
        plots.main(["samples", "--run-file", "run.h5", "--label", "A"])
    assert refused.value.code == 2


def test_out_must_name_a_png(synthetic, tmp_path) -> None:
    """The PDF goes beside the PNG with the same stem, so --out names the PNG."""
    out = tmp_path / "figure.pdf"
    with pytest.raises(SystemExit) as refused:
        plots.main(["multi_seed_accuracy", "--metrics", str(synthetic), "--out", str(out)])
    assert refused.value.code == 2
    assert not list(tmp_path.glob("figure.*"))


PUBLISHED = REPO / "workflow/resources/kingma2014_m2.csv"


def test_accuracy_against_labels_draws_each_label_count_and_the_published_m2(tmp_path) -> None:
    """One point per run and label count (10 and 60 a class: 100 and 600 labels), at the mean
    over seeds with its interval; Kingma et al.'s M2 where a compared count has it."""
    tables = [synthetic_metrics(tmp_path, k) for k in (60, 10)]
    out = tmp_path / "plots" / "accuracy_vs_labels.png"
    plots.main(["accuracy_vs_labels", "--label-count-metrics", *map(str, tables),
                "--published", str(PUBLISHED), "--out", str(out)])  # fmt: skip
    assert png_size(out) == png_pixels(plots.TWO_PANELS)
    assert png_dpi(out) == figures.PNG_DPI
    assert is_pdf(out.with_suffix(".pdf"))

    fig = plots.accuracy_vs_labels_figure(tables, pd.read_csv(PUBLISHED, comment="#"))
    valid, test = fig.axes[:2]
    drawn = {bars.get_label(): bars.lines[0] for bars in test.containers}
    exact = drawn["ExactM2"]
    assert exact.get_xdata().tolist() == [100, 600]
    # The synthetic ExactM2's test accuracies are 0.91, 0.93 and 0.95 at both counts.
    np.testing.assert_allclose(np.asarray(exact.get_ydata(), float), [0.93, 0.93])
    m2 = drawn[plots.PUBLISHED_M2]
    assert m2.get_xdata().tolist() == [100, 600]  # 1,000 and 3,000 labels are not compared
    np.testing.assert_allclose(np.asarray(m2.get_ydata(), float), [1 - 0.1197, 1 - 0.0494])
    assert plots.PUBLISHED_M2 not in [bars.get_label() for bars in valid.containers]
    for ax in (valid, test):
        assert ax.get_xscale() == "log"
        assert ax.get_xlabel() == "labeled images (log scale)" and ax.get_ylabel() == "accuracy"
    plt.close(fig)


def test_comparison_figures_say_their_label_count(tmp_path) -> None:
    for k, heading in (
        (10, "100 labeled images (10 a class)"),
        (3, "30 labeled images (3 a class)"),
    ):
        args = argparse.Namespace(metrics=synthetic_metrics(tmp_path, k), threshold=0.01)
        for stem, figure in figures.BY_STEM.items():
            if figure.source == "metrics":
                fig = plots.draw(figure, args)
                assert fig.get_suptitle() == heading, stem
                plt.close(fig)
