"""ssvae-check-gpu: one line and a non-zero exit without CUDA; its measurements, run on the CPU
with a tiny config, hold together (a GPU is needed for its real numbers)."""

from pathlib import Path

import pytest
import torch
import yaml
from workflow_helpers import REPO

from ssvae import check_gpu


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_without_cuda_it_says_so_in_one_line(run_console_script, tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    result = run_console_script("ssvae-check-gpu", "--out", str(out))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("ssvae-check-gpu: error: no CUDA GPU visible to torch")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """The workflow's config cut to two MLP runs of identical settings, 4 steps per epoch."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config |= {
        "seeds": [1, 2, 3],
        "steps_per_epoch": 4,
        "training": {"batch_size": 20},
        "compare": ["MLP", "MLP_again"],
    }
    config["runs"]["MLP_again"] = config["runs"]["MLP"] | {"label": "MLP again"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_check_measures_what_it_reports(tiny_config: Path, small_mnist: Path, capsys) -> None:
    report = check_gpu.run_check(
        tiny_config, small_mnist, torch.device("cpu"), None, warmup=1, steps=2, jobs=[1, 2],
        log=lambda *args, **kwargs: None,
    )  # fmt: skip
    # Runs that differ in nothing the step's cost depends on share one measurement.
    assert list(report["models"]) == ["MLP"]
    timings = report["models"]["MLP"]
    assert list(timings) == ["eager, tf32 off", "eager, tf32 on", "compiled, tf32 off",
                             "compiled, tf32 on"]  # fmt: skip
    assert all(row["ms_per_step"] > 0 for row in timings.values())
    # Each timing says how the step ran: compiled where asked (on CPU: no CUDA graphs).
    assert [row["step"] for row in timings.values()] == ["eager", "eager", "compiled", "compiled"]
    assert [row["jobs"] for row in report["sharing"]] == [1, 2]
    epoch = report["one_epoch"]["MLP"]
    assert epoch["eager"]["step"] == "eager" and epoch["compiled"]["step"] == "compiled"
    assert epoch["difference"] == pytest.approx(
        epoch["compiled"]["valid_accuracy"] - epoch["eager"]["valid_accuracy"]
    )
    assert epoch["agree"]  # 4 steps from the same start: only rounding separates them
    assert "ExactM2" not in report["one_epoch"]  # not compared in this config
    projected = report["projection"]
    hours = projected["hours_one_job_at_a_time"]["compiled, tf32 off"]
    # Two runs of three seeds, each as long as the MLP's measured run.
    assert hours == pytest.approx(2 * 3 * timings["compiled, tf32 off"]["s_per_run"] / 3600)
    single, double = report["sharing"]
    best = max(single, double, key=lambda row: row["steps_per_s_total"])
    speedup = best["steps_per_s_total"] / single["steps_per_s_total"]
    assert projected["hours_sharing"]["compiled, tf32 off"] == pytest.approx(hours / speedup)
    check_gpu.print_table(report)
    printed = capsys.readouterr().out
    assert "MLP after one epoch" in printed and "projected 2 runs x 3 seeds" in printed
