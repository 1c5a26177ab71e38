"""ssvae-status: where every (run, seed) of a configuration stands, at any moment while
snakemake builds it (locally, or on SLURM over a shared filesystem), and the comparison's time
left at the present rate. It reads the config as snakemake does and what the training jobs
write beside each run file (the run file, its checkpoint, its progress file); it never imports
torch, and never touches a job's files."""

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from snakemake.utils import update_config

from ssvae.cli import entry_point_parser
from ssvae.config import ConfigError
from ssvae.errors import InputError, exit_on_user_error
from ssvae.progress import DIVERGED, DONE, INTERRUPTED, TRAINING, Progress, duration, read_progress
from ssvae.runfile import checkpoint_path, diverged_path, run_file_path
from ssvae.splits import N_CLASSES, ORIGINAL_LABELS_PER_CLASS, labels_root
from ssvae.store import pending_retrain
from ssvae.workflow_config import validate

NOT_STARTED = "not started"
WORKFLOW_CONFIG = Path("config.yaml")  # the Snakefile's configfile, read from where snakemake runs
# A job on another host is taken for gone when its progress file has not changed for this many
# of its epochs (and at least STALE_AFTER_S): it was killed without a word (SIGKILL, a node lost).
STALE_EPOCHS, STALE_AFTER_S = 3, 1800


@dataclass
class SeedStatus:
    run: str
    seed: int
    state: str
    detail: str = ""
    epochs_left: int = 0  # epochs it has still to train, as far as it is known
    seconds_per_epoch: float | None = None  # of its job, if it has trained
    seeds_in_job: int = 1  # its job's seeds, which share each epoch's time
    labels: int = N_CLASSES * ORIGINAL_LABELS_PER_CLASS  # labeled images of its split


def load_config(configfiles: list[Path], overrides: list[str]) -> dict:
    """config.yaml, updated by each --configfile and then by --config, as snakemake reads them,
    and validated as the workflow validates it."""
    config = {}
    for path in [WORKFLOW_CONFIG, *configfiles]:
        try:
            update_config(config, yaml.safe_load(Path(path).read_text()) or {})
        except OSError as err:
            raise InputError(
                f"{path}: cannot be read ({err.strerror or err}); run ssvae-status where "
                "snakemake runs, with the same --configfile"
            ) from None
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    if overrides:
        from snakemake.cli import parse_config  # slow to import: only when it is needed

        try:
            update_config(config, parse_config(overrides))
        except ValueError as err:
            raise ConfigError(f"--config: {err}") from None
    validate(config)
    return config


def job_alive(progress: Progress, now: float) -> bool:
    """Whether the process its progress file names still trains it: on this host, whether that
    process exists; on another, whether it wrote recently for its pace."""
    if progress.host == socket.gethostname():
        try:
            os.kill(progress.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, run by another user
            return True
        return True
    pace = progress.seconds_per_epoch or 0.0
    return now - progress.updated < max(STALE_EPOCHS * pace, STALE_AFTER_S)


def seed_status(out: Path, run: str, seed: int, epochs: int, now: float) -> SeedStatus:
    """Where one seed stands, from the files beside its run file."""
    progress = read_progress(out)
    pace = None if progress is None else progress.seconds_per_epoch
    if progress is not None and progress.state == TRAINING and job_alive(progress, now):
        left = progress.seconds_left()
        done = f"epoch {progress.epoch}/{epochs} done" if progress.epoch >= 0 else ""
        detail = done or "in its first epoch"
        if pace is not None:
            detail += f", {pace:.1f} s/epoch"
        detail = ", ".join(filter(None, [detail, validation(progress)]))
        if left is not None:
            detail += f", {duration(left)} left"
        status = SeedStatus(run, seed, TRAINING, detail, epochs - progress.epoch, pace)
        return with_job(status, progress)
    retrain = pending_retrain(out)
    if out.exists() and retrain is None:
        return with_job(SeedStatus(run, seed, DONE, validation(progress), 0, pace), progress)
    # A diverged record stands until a later attempt trains the seed again.
    if diverged_path(out).exists() and (progress is None or progress.state == DIVERGED):
        where = progress.diverged_at if progress and progress.state == DIVERGED else ""
        detail = f"at {where}; " if where else ""
        return SeedStatus(run, seed, DIVERGED, f"{detail}its epochs in {diverged_path(out).name}")
    if checkpoint_path(out).exists():
        at = progress.checkpoint_epoch if progress else None
        if at is None:
            return SeedStatus(run, seed, INTERRUPTED, "resumable from its checkpoint", epochs + 1)
        step = f", step {progress.checkpoint_step}" if progress.checkpoint_step else ""
        detail = f"resumable from epoch {at}{step}"
        return with_job(SeedStatus(run, seed, INTERRUPTED, detail, epochs + 1 - at, pace), progress)
    if progress is not None and progress.state in (TRAINING, INTERRUPTED):
        detail = "stopped before its first checkpoint: starts again from epoch 0"
        return with_job(SeedStatus(run, seed, INTERRUPTED, detail, epochs + 1, pace), progress)
    detail = "a retrain is asked for: its run file will be replaced" if retrain else ""
    return SeedStatus(run, seed, NOT_STARTED, detail, epochs + 1)


def with_job(status: SeedStatus, progress: Progress | None) -> SeedStatus:
    if progress is not None:
        status.seeds_in_job = progress.seeds_in_job
    return status


def validation(progress: Progress | None) -> str:
    if progress is None or progress.valid_accuracy is None:
        return ""
    return f"valid acc {progress.valid_accuracy:.4f} (epoch {progress.valid_epoch})"


def comparison_status(config: dict, now: float) -> list[SeedStatus]:
    """Every (run, seed) the config compares at each of its label counts, in its order."""
    statuses = []
    for k in config["labels_per_class"]:
        root = labels_root(config["results_dir"], k)
        for run in config["compare"]:
            for seed in config["seeds"]:
                status = seed_status(
                    run_file_path(root, run, seed), run, seed, config["epochs"], now
                )
                status.labels = N_CLASSES * k
                statuses.append(status)
    return statuses


def time_left(statuses: list[SeedStatus]) -> str:
    """The comparison's time left at the present rate: the epochs left of every seed at its
    run's measured pace (a job's epoch time shared among the seeds it trains together), shared
    among the jobs training now."""
    paces = {}  # a seed's share of an epoch; it does not depend on the label count
    for status in statuses:
        if status.seconds_per_epoch is not None:
            share = status.seconds_per_epoch / status.seeds_in_job
            paces.setdefault(status.run, []).append(share)
    work, untimed = 0.0, []
    for status in statuses:
        if status.state in (DONE, DIVERGED):
            continue
        if status.run in paces:
            pace = sum(paces[status.run]) / len(paces[status.run])
            work += status.epochs_left * pace
        elif status.run not in untimed:
            untimed.append(status.run)
    if work == 0:
        if untimed:
            return "time left not known yet: no run has trained an epoch"
        return "nothing left to train"
    training = [status for status in statuses if status.state == TRAINING]
    if training:
        jobs = sum(1 / status.seeds_in_job for status in training)
        seeds = f"{len(training)} seed{'s' * (len(training) > 1)}"
        line = f"time left at the present rate ({seeds} training at once): "
        line += f"about {duration(work / jobs)}"
    else:
        line = f"nothing is training now; the work left is {duration(work)} of one job's time"
    if untimed:
        line += f" (without runs not timed yet: {', '.join(untimed)})"
    return line


def report(config: dict, statuses: list[SeedStatus]) -> str:
    width = max(len("run"), *(len(status.run) for status in statuses))
    label_counts = len(config["labels_per_class"])
    several = label_counts > 1  # then a column says each seed's number of labeled images
    lines = [
        f"{config['results_dir']}: {len(config['compare'])} runs x {len(config['seeds'])} seeds"
        f"{f' x {label_counts} label counts' if several else ''}, epochs 0..{config['epochs']}",
        f"{'labels  ' * several}{'run':<{width}}  {'seed':>4}  {'state':<12} detail",
    ]
    for status in statuses:
        labels = f"{status.labels:>6}  " if several else ""
        row = f"{labels}{status.run:<{width}}  {status.seed:>4}  {status.state:<12} {status.detail}"
        lines.append(row.rstrip())
    counts = [
        f"{sum(status.state == state for status in statuses)} {state}"
        for state in (DONE, TRAINING, INTERRUPTED, DIVERGED, NOT_STARTED)
    ]
    lines.append(f"{len(statuses)} seeds: {', '.join(counts)}; {time_left(statuses)}")
    return "\n".join(lines)


def command_line():
    parser = entry_point_parser(
        "ssvae-status",
        "Where every (run, seed) of the configuration stands while snakemake builds it: done, "
        "training (epoch, pace, last validation accuracy, time left), interrupted (where it "
        "resumes), diverged (where) or not started; and the comparison's time left at the "
        "present rate. Run it where snakemake runs, with the same --configfile and --config.",
    )
    parser.add_argument(
        "--configfile", type=Path, nargs="+", default=[], help="as snakemake's --configfile"
    )
    parser.add_argument(
        "--config", nargs="+", default=[], metavar="KEY=VALUE", help="as snakemake's --config"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = command_line().parse_args(argv)
    with exit_on_user_error("ssvae-status"):
        config = load_config(args.configfile, args.config)
        print(report(config, comparison_status(config, time.time())))


if __name__ == "__main__":
    main()
