"""The aggregated metrics and the report, on a tiny synthetic set of runs whose answer is known."""

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from synthetic_runs import NEW, RUNS, Z, synthetic_metrics, write_run

from ssvae import metrics, report


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    return synthetic_metrics(tmp_path)


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "reference.csv"
    path.write_text("label,valid_accuracy\nExactM2,0.942\nMLP,0.771\nLogGamma,0.874\n")
    return path


def test_aggregate_keeps_runs_seeds_and_kl(synthetic: Path) -> None:
    runs = metrics.read_runs(synthetic)
    assert runs.run.tolist() == ["ExactM2", "MLP", "New"]
    assert runs.palette_index.tolist() == [0, 8, 9]
    assert runs.seeds_configured.tolist() == [3, 3, 3]
    seeds = metrics.read_seeds(synthetic)
    assert len(seeds) == 6
    assert seeds.set_index(["run", "seed"]).wall_seconds[("ExactM2", 2)] == 200.0
    rows, kl = metrics.read_z_kl(synthetic)
    assert kl.shape == (4 * 3, Z)  # three ExactM2 seeds and one New seed, 3 validations each
    assert set(rows.run) == {"ExactM2", "New"}


def test_active_dims_counts_dimensions_strictly_above_the_threshold(synthetic: Path) -> None:
    active = metrics.active_dims(synthetic, 0.01)
    exact_last = active[(active.run == "ExactM2") & (active.epoch == 20)]
    assert exact_last.sort_values("seed").value.tolist() == [5, 7, 9]
    assert set(active.split) == {"valid"} and set(active.metric) == {"active_dims"}
    # Lower the threshold below 0.01 and the dimension sitting at it becomes active too.
    lowered = metrics.active_dims(synthetic, 0.005)
    assert lowered[(lowered.run == "ExactM2") & (lowered.epoch == 20)].value.min() == 6


def test_report_table_has_the_known_numbers(synthetic: Path, reference: Path) -> None:
    table = report.results_table(synthetic, reference, 0.01).set_index("run")
    exact, mlp, new = table.loc["ExactM2"], table.loc["MLP"], table.loc["New"]
    # ExactM2: seed means 0.82, 0.92, 0.90 -> best epoch 10; seeds at it 0.90, 0.94, 0.92.
    assert exact.best_epoch == 10
    assert exact.valid_accuracy_best_mean == pytest.approx(0.92)
    assert exact.valid_accuracy_best_std == pytest.approx(0.02)
    assert exact.last_epoch == 20
    assert exact.valid_accuracy_last_mean == pytest.approx(0.90)
    assert exact.valid_accuracy_last_std == pytest.approx(0.02)
    assert exact.test_accuracy_mean == pytest.approx(0.93)
    assert exact.test_accuracy_std == pytest.approx(0.02)
    assert exact.original_valid_accuracy == 0.942
    assert exact.difference == pytest.approx(0.92 - 0.942)
    assert (exact.seeds_complete, exact.seeds_configured) == (3, 3)
    assert (exact.wall_seconds_mean, exact.wall_seconds_total) == (200.0, 600.0)
    assert (exact.active_dims_last_mean, exact.active_dims_last_std) == (7.0, 2.0)
    # MLP: two of three seeds; means 0.76, 0.74, 0.73 -> best at epoch 0; no latent space.
    assert mlp.best_epoch == 0
    assert mlp.valid_accuracy_best_mean == pytest.approx(0.76)
    assert mlp.valid_accuracy_best_std == pytest.approx(math.sqrt(2) * 0.01)
    assert mlp.difference == pytest.approx(0.76 - 0.771)
    assert (mlp.seeds_complete, mlp.seeds_configured) == (2, 3)
    assert math.isnan(mlp.active_dims_last_mean)
    # A run the original did not have: no reference, no difference; one seed, no spread.
    assert math.isnan(new.original_valid_accuracy) and math.isnan(new.difference)
    assert math.isnan(new.valid_accuracy_best_std)
    assert new.active_dims_last_mean == 4.0


# Student's t quantiles t(0.975; df) from a printed table, so the test does not share the code's
# way of computing them.
T_975 = {1: 12.7062, 2: 4.3027}


def test_confidence_intervals_and_paired_differences_worked_by_hand(synthetic: Path) -> None:
    """By hand from the synthetic runs. ExactM2's seeds 1-3 end at valid 0.88/0.90/0.92 and test
    0.91/0.93/0.95; the MLP's seeds 1-2 at valid 0.74/0.72, test 0.70/0.72; the New run's seed
    1 at valid 0.45. A t interval is mean ± t(0.975; n-1) s / sqrt(n)."""
    summary = pd.read_csv(synthetic.with_name("summary.csv")).set_index("run")
    exact, mlp, new = summary.loc["ExactM2"], summary.loc["MLP"], summary.loc["New"]
    half = T_975[2] * 0.02 / math.sqrt(3)  # ExactM2: s = 0.02 for valid last, test and best
    for column, mean in [("valid_accuracy_last", 0.90), ("test_accuracy", 0.93),
                         ("valid_accuracy_best", 0.92)]:  # fmt: skip
        assert exact[f"{column}_mean"] == pytest.approx(mean)
        assert exact[f"{column}_ci_low"] == pytest.approx(mean - half, abs=1e-4)
        assert exact[f"{column}_ci_high"] == pytest.approx(mean + half, abs=1e-4)
    half = T_975[1] * 0.02 / math.sqrt(2) / math.sqrt(2)  # MLP valid last: s = 0.02 / sqrt(2)
    assert (mlp.valid_accuracy_last_ci_low, mlp.valid_accuracy_last_ci_high) == pytest.approx(
        (0.73 - half, 0.73 + half), abs=1e-4
    )
    # Paired with ExactM2 on seeds 1 and 2: valid differences -0.14 and -0.18, test -0.21 twice.
    half = T_975[1] * 0.02 * math.sqrt(2) / math.sqrt(2)
    assert mlp.valid_accuracy_last_diff_mean == pytest.approx(-0.16)
    assert (mlp.valid_accuracy_last_diff_ci_low, mlp.valid_accuracy_last_diff_ci_high) == (
        pytest.approx((-0.16 - half, -0.16 + half), abs=1e-4)
    )
    assert mlp.valid_accuracy_last_ahead_share == 0 and mlp.valid_accuracy_last_paired_seeds == 2
    assert mlp.test_accuracy_diff_mean == pytest.approx(-0.21)
    assert mlp.test_accuracy_diff_ci_low == pytest.approx(-0.21)
    assert mlp.test_accuracy_diff_ci_high == pytest.approx(-0.21)
    # The reference against itself says nothing: left empty. One seed gives a difference but
    # no interval.
    assert math.isnan(exact.valid_accuracy_last_diff_mean)
    assert math.isnan(exact.test_accuracy_ahead_share)
    assert new.valid_accuracy_last_diff_mean == pytest.approx(0.45 - 0.88)
    assert math.isnan(new.valid_accuracy_last_diff_ci_low) and new.test_accuracy_paired_seeds == 1
    assert (summary.reference_run == "ExactM2").all()


def test_intervals_never_leave_what_is_possible() -> None:
    """Two seeds at 0.1 and 0.3: mean 0.2, s = 0.1414, t(0.975; 1) = 12.71, so the t interval
    0.2 ± 1.27 would reach from -1.07 to 1.47, but an accuracy lies in [0, 1]. Differences +0.4
    and +0.7 (0.55 ± 1.91) lie in [-1, 1]. An interval inside the range is left as it is."""
    interval = metrics.mean_interval(pd.Series([0.1, 0.3], index=[1, 2]))
    assert interval["mean"] == pytest.approx(0.2)
    assert (interval["ci_low"], interval["ci_high"]) == (0.0, 1.0)
    seeds = [1, 2]
    paired = metrics.paired_difference(pd.Series([0.5, 0.9], seeds), pd.Series([0.1, 0.2], seeds))
    assert paired["diff_mean"] == pytest.approx(0.55)
    assert (paired["diff_ci_low"], paired["diff_ci_high"]) == (-1.0, 1.0)
    inside = metrics.mean_interval(pd.Series([0.50, 0.52], index=[1, 2]))
    half = T_975[1] * 0.02 / math.sqrt(2) / math.sqrt(2)
    assert (inside["ci_low"], inside["ci_high"]) == pytest.approx((0.51 - half, 0.51 + half))


def test_one_seed_reports_values_and_says_why_there_is_no_interval(
    tmp_path: Path, reference: Path
) -> None:
    runs = {"New": RUNS["New"] | {"seeds": [1]}}
    ((valid, test),) = NEW.values()
    files = [write_run(tmp_path, "New", 1, valid, test, 9000.0, [4, 4, 4])]
    aggregated = tmp_path / "metrics.h5"
    metrics.aggregate(files, runs, aggregated, tmp_path / "summary.csv", "New")
    out_md = tmp_path / "report.md"
    report.write_report(aggregated, reference, [], 0.01, out_md, tmp_path / "report.csv")
    text = out_md.read_text()
    assert "1 seed each" in text and "an interval needs two seeds or more" in text
    assert "confidence interval" not in text.split("Definitions:")[0]
    assert "| New run | 0.450 | 0.480 |" in text


def test_a_run_ahead_on_some_seeds_gets_that_share() -> None:
    values = pd.Series([0.91, 0.95, 0.93, 0.90], index=[1, 2, 3, 4])
    reference = pd.Series([0.92, 0.94, 0.93, 0.89, 0.99], index=[1, 2, 3, 4, 5])
    paired = metrics.paired_difference(values, reference)
    # Differences -0.01, +0.01, 0, +0.01 on the 4 shared seeds: ahead (strictly) on 2 of 4.
    assert paired["paired_seeds"] == 4 and paired["ahead_share"] == 0.5
    assert paired["diff_mean"] == pytest.approx(0.0025)
    # A seed without a value (NaN) counts neither in the pairs nor in an interval's n.
    values[4] = float("nan")
    assert metrics.paired_difference(values, reference)["paired_seeds"] == 3
    assert metrics.mean_interval(values)["ci_low"] == pytest.approx(
        0.93 - T_975[2] * 0.02 / math.sqrt(3), abs=1e-4
    )


def test_report_markdown_and_csv(synthetic: Path, reference: Path, tmp_path: Path) -> None:
    results = synthetic.parents[1]
    names = ["samples_A_seed2", "KL_Z_valid_mean_A_seed2", "KL_Z_A_seed2", "multi_seed_accuracy"]
    figures = [results / f"plots/{name}.png" for name in names]
    out_md, out_csv = results / "report.md", results / "report.csv"
    report.write_report(synthetic, reference, figures, 0.01, out_md, out_csv)
    text = out_md.read_text()
    accuracy, rest = text.split("Definitions:")
    paired = rest.split("## Paired with ExactM2")[1].split("## Cost")[0]
    cost = rest.split("## Cost")[1].split("## How the runs were computed")[0]

    def rows(section: str) -> dict[str, str]:
        return {line.split(" | ")[0][2:]: line for line in section.splitlines() if line[:2] == "| "}

    assert rows(accuracy)["ExactM2"] == (
        "| ExactM2 | 0.900 [0.850, 0.950] | 0.930 [0.880, 0.980] | 0.920 [0.870, 0.970] at epoch "
        "10 | 0.942 | -0.022 | 3/3 | 7.0 ± 2.0 |"
    )
    assert rows(accuracy)["MLP"] == (
        "| MLP | 0.730 [0.603, 0.857] | 0.710 [0.583, 0.837] | 0.760 [0.633, 0.887] at epoch 0 "
        "| 0.771 | -0.011 | 2/3 | – |"
    )
    assert rows(accuracy)["New run"] == (
        "| New run | 0.450 | 0.480 | 0.500 at epoch 10 | – | – | 1/3 | 4.0 |"
    )
    assert rows(paired)["ExactM2"] == "| ExactM2 | (the reference) |  |  |  |"
    assert rows(paired)["MLP"] == (
        "| MLP | -0.160 [-0.414, +0.094] | 0 of 2 | -0.210 [-0.210, -0.210] | 0 of 2 |"
    )
    assert rows(paired)["New run"] == "| New run | -0.430 | 0 of 1 | -0.430 | 0 of 1 |"
    # Job time: ExactM2's three jobs took 110, 210 and 310 s; MLP's seeds shared one job of 80 s.
    # Training wall time from the run files.
    assert rows(cost)["ExactM2"] == "| ExactM2 | 3.5 min | 10.5 min | 1,700 MB | 3.3 min |"
    assert rows(cost)["MLP"] == "| MLP | 40 s | 80 s | 810 MB | 30 s |"
    assert rows(cost)["New run"] == "| New run | 2.5 h | 2.5 h | – | 2.5 h |"
    assert "optimistic: a maximum over 3 validations" in text
    assert "ExactM2 > MLP; the same as the original's (ExactM2 > MLP)" in text
    assert "Runs within ±0.01 of the original: 0 of 2." in text
    # Figures are embedded by paths relative to the report.
    assert "![multi_seed_accuracy](plots/multi_seed_accuracy.png)" in text
    assert "![samples_A_seed2](plots/samples_A_seed2.png)" in text
    # In section order, whatever order they come in; each KL figure under its own heading.
    embedded = re.findall(r"!\[([^]]+)\]", text)
    assert embedded == [
        "multi_seed_accuracy",
        "samples_A_seed2",
        "KL_Z_A_seed2",
        "KL_Z_valid_mean_A_seed2",
    ]
    assert "| run | device | torch | CUDA | training step | run files |" in text
    assert "| ExactM2 | cpu | 2.13.0 | none | eager | 3 |" in text
    assert "| MLP | NVIDIA H200 | 2.13.0 | 12.8 | compiled, CUDA graphs | 1 |" in text
    assert "| MLP | NVIDIA H200 | 2.13.0 | 12.8 | eager (compiling failed) | 1 |" in text
    assert "| New run | cpu | 2.13.0 | none | eager | 1 |" in text
    table = pd.read_csv(out_csv)
    assert table.run.tolist() == ["ExactM2", "MLP", "New"]
    assert table.valid_accuracy_best_mean.tolist() == pytest.approx([0.92, 0.76, 0.50])


def report_cli(run, synthetic: Path, reference: Path, out_dir: Path, *figures: Path):
    """ssvae-report as the workflow's rule calls it, writing report.md and report.csv."""
    figure_args = ["--figures", *map(str, figures)] if figures else []
    return run(
        "ssvae-report", "--metrics", str(synthetic), "--reference", str(reference),
        *figure_args, "--threshold", "0.01",
        "--out-md", str(out_dir / "report.md"), "--out-csv", str(out_dir / "report.csv"),
    )  # fmt: skip


def test_report_cli_refuses_an_unknown_figure_and_writes_nothing(
    synthetic: Path, reference: Path, tmp_path: Path, run_console_script
) -> None:
    out = tmp_path / "out"
    mystery = tmp_path / "plots/mystery.png"
    result = report_cli(run_console_script, synthetic, reference, out, mystery)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "ssvae-report: error: figure mystery.png: not a figure of the comparison"
    )
    assert not (out / "report.md").exists() and not (out / "report.csv").exists()


def test_report_cli_writes_both_files(
    synthetic: Path, reference: Path, tmp_path: Path, run_console_script
) -> None:
    result = report_cli(run_console_script, synthetic, reference, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.md").read_text().startswith("# Results")
    assert len(pd.read_csv(tmp_path / "report.csv")) == 3


def test_reference_file_matches_the_spec() -> None:
    """The repository's copy of the original's numbers, against docs/original.md section 8."""
    repo = Path(__file__).resolve().parents[1]
    reference = pd.read_csv(repo / "workflow/resources/reference_results.csv")
    expected = {
        "ExactM2": 0.942,
        "GumbelSoftmaxM2 shrp=3.0": 0.941,
        "LogisticNormalM2 shrp=3.0": 0.939,
        "LogisticNormal": 0.923,
        "LogisticNormalM2": 0.897,
        "STGumbelSoftmaxM2": 0.890,
        "ApproxM2": 0.875,
        "LogGamma": 0.874,
        "MLP": 0.771,
    }
    assert dict(zip(reference.label, reference.valid_accuracy, strict=True)) == expected
    config_runs = yaml.safe_load((repo / "config.yaml").read_text())["runs"]
    labels = {run["label"] for run in config_runs.values()}
    assert labels == set(expected), "every run of config.yaml has the original's number"


def test_another_label_count_says_so_and_has_no_original_column(
    tmp_path: Path, reference: Path
) -> None:
    """The original's numbers are for its 100 labels: at 30 labels the report says its count,
    leaves the original and difference columns empty, and keeps the paired differences."""
    aggregated = synthetic_metrics(tmp_path, labels_per_class=3)
    out_md, out_csv = tmp_path / "report.md", tmp_path / "report.csv"
    report.write_report(aggregated, reference, [], 0.01, out_md, out_csv)
    text = out_md.read_text()
    assert text.startswith("# Results: semi-supervised VAEs on MNIST with 30 labels (3 a class)")
    assert "The original's numbers are for 100 labels, not 30" in text
    assert "## Paired with ExactM2" in text
    table = pd.read_csv(out_csv)
    assert table.labels_per_class.tolist() == [3, 3, 3]
    assert table.original_valid_accuracy.isna().all() and table.difference.isna().all()
    assert table.set_index("run").valid_accuracy_last_diff_mean.notna().tolist() == [
        False,
        True,
        True,
    ]
