"""This checkout's training step against a baseline's, side by side: `python -m ssvae.bench
--baseline REF`. Absolute times on a shared machine drift by a fifth between runs, so the two
are timed alternately, in the same conditions, round after round: each round runs one bench
worker (a fresh process training one seed of one run) of each side, the baseline's code taken
from git at REF, and each side's rate is the median of its rounds. The ratio (this / baseline,
ms per step) comes with its spread: the lowest and highest of the per-round ratios."""

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from ssvae.errors import UserError

SIDES = ("baseline", "this checkout")


def extract(ref: str, repo: Path, into: Path) -> Path:
    """The baseline's source (src/ and config.yaml of `ref`) under `into`; its root."""
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", ref, "src", "config.yaml"],
        capture_output=True,
    )
    if archive.returncode != 0:
        problem = archive.stderr.decode().strip().splitlines()[-1:] or ["git archive failed"]
        raise UserError(f"--baseline {ref}: {problem[0]}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def time_side(root: Path, run: str, options: dict[str, str]) -> dict:
    """One bench worker of the code under `root`, training `run`: its JSON row."""
    command = [sys.executable, "-m", "ssvae.bench", "--worker", "--runs", run,
               "--config", str(root / "config.yaml")]  # fmt: skip
    for option, value in options.items():
        command += [option, value]
    env = os.environ | {"PYTHONPATH": str(root / "src")}  # before any installed ssvae
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"a bench worker of {root} failed on {run}: {tail}")
    return json.loads(result.stdout.splitlines()[-1])


def compare(ref: str, runs: list[str], rounds: int, options: dict[str, str]) -> dict:
    """Per run: each side's ms per step in every round (the baseline first in odd rounds, this
    checkout first in even ones), their medians, and the ratio with its spread."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise UserError("--baseline: run it inside the repository's git checkout")
    repo = Path(top.stdout.strip())
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ssvae-baseline-") as scratch:
        roots = {"baseline": extract(ref, repo, Path(scratch)), "this checkout": repo}
        for run in runs:
            times = {side: [] for side in SIDES}
            for round_index in range(rounds):
                order = SIDES if round_index % 2 == 0 else SIDES[::-1]
                for side in order:
                    times[side].append(time_side(roots[side], run, options)["ms_per_step"])
                print(f"{run}, round {round_index + 1}: baseline {times['baseline'][-1]:.1f}, "
                      f"this {times['this checkout'][-1]:.1f} ms/step", flush=True)  # fmt: skip
            ratios = [ours / theirs for theirs, ours in zip(*times.values(), strict=True)]
            medians = {side: statistics.median(values) for side, values in times.items()}
            rows[run] = {
                "baseline_ms_per_step": times["baseline"],
                "ms_per_step": times["this checkout"],
                "ratio": medians["this checkout"] / medians["baseline"],
                "ratio_low": min(ratios),
                "ratio_high": max(ratios),
            }
    return {"baseline": ref, "rounds": rounds, "runs": rows}


def print_table(report: dict) -> None:
    print(f"\nthis checkout against {report['baseline']}, {report['rounds']} alternating rounds")
    print(f"{'run':<24} {'baseline ms/step':>18} {'this ms/step':>14} {'ratio':>6}  spread")
    for run, row in report["runs"].items():
        theirs = statistics.median(row["baseline_ms_per_step"])
        ours = statistics.median(row["ms_per_step"])
        print(f"{run:<24} {theirs:>18.1f} {ours:>14.1f} {row['ratio']:>6.3f}  "
              f"{row['ratio_low']:.3f}-{row['ratio_high']:.3f}")  # fmt: skip
