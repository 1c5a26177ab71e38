"""ssvae-train: the command line of a training job. It takes the job's seeds and files, holds
each seed's lock (one trainer per run file), keeps every attempt's log beside the run file, and
turns SIGTERM and SIGINT into a checkpoint and a clean stop; what the job does is ssvae.job's.
"""

import json
import os
import signal
import threading
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from ssvae import compute, store
from ssvae.cli import entry_point_parser
from ssvae.config import ConfigError, TrainConfig, settings_help
from ssvae.errors import exit_on_user_error
from ssvae.io import check_writable, hold_lock
from ssvae.job import SeedFiles, check_one_run, check_outputs_writable, train_pack
from ssvae.splits import read_split


def command_line():
    parser = entry_point_parser(
        "ssvae-train",
        "Train the seeds of one run together (one seed, or a pack of several) and write each "
        "seed's run file (HDF5).",
        settings_help(),
    )
    parser.add_argument("--data", type=Path, required=True, help="prepared MNIST .npz")
    parser.add_argument(
        "--run-config",
        required=True,
        help="JSON object of TrainConfig settings (run, model, seed, ...)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train these seeds together (default: the run config's seed, or else the seed of "
        "each --split file); the files below are given once per seed, in this order",
    )
    parser.add_argument(
        "--split", type=Path, nargs="+", required=True, help="labeled split JSON of each seed"
    )
    parser.add_argument(
        "--out", type=Path, nargs="+", required=True, help="each seed's run file (.h5) to write"
    )
    compute.add_compute_options(parser)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        help="file for each seed's training state: written every --checkpoint-every epochs and "
        "on SIGTERM or SIGINT, resumed from when present, deleted when the run completes",
    )
    parser.add_argument(
        "--store",
        type=Path,
        help="result store: a seed whose computation it holds takes its run file from there "
        "instead of training (unless <out stem>.retrain asks for a retrain), and every "
        "completed run file goes into it",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        help="epochs between checkpoints (0: only on SIGTERM or SIGINT)",
    )
    return parser


def seeds_and_files(args) -> tuple[list[TrainConfig], list[SeedFiles]]:
    """Each seed's settings and files, from the command line."""
    try:
        run_config = json.loads(args.run_config)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--run-config is not valid JSON ({err})") from None
    if not isinstance(run_config, dict):
        raise ConfigError("--run-config must be a JSON object")
    seeds = args.seeds
    if seeds is None:  # the run config's seed, or else each split's own
        has_seed = "seed" in run_config
        seeds = [run_config["seed"]] if has_seed else [read_split(p)["seed"] for p in args.split]
    cfgs = [TrainConfig.from_dict(run_config | {"seed": seed}) for seed in seeds]
    checkpoints = args.checkpoint or [None] * len(seeds)
    for option, paths in (("--split", args.split), ("--out", args.out),
                          ("--checkpoint", checkpoints)):  # fmt: skip
        if len(paths) != len(seeds):
            raise ConfigError(f"{option}: {len(paths)} paths for {len(seeds)} seeds")
    return cfgs, [
        SeedFiles(*paths) for paths in zip(args.split, args.out, checkpoints, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = command_line()
    args = parser.parse_args(argv)
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be at least 0, not {args.checkpoint_every}")
    with exit_on_user_error("ssvae-train"):
        cfgs, files = seeds_and_files(args)
        # Before the locks: one path given twice is named as such, and an output that cannot
        # be written is named rather than its lock.
        check_one_run(cfgs, files)
        check_outputs_writable(files)
        with ExitStack() as held:
            for seed_files in files:
                held.enter_context(hold_lock(seed_files.lock, f"training {seed_files.out}"))
            log = attempts_log([seed_files.out for seed_files in files])
            device, compiled = compute.apply_compute_options(args)
            train_pack(
                cfgs,
                args.data,
                files,
                device,
                log,
                checkpoint_every=args.checkpoint_every,
                stop=stop_on_signals(),
                compiled=compiled,
                result_store=None if args.store is None else store.ResultStore(args.store),
            )


def attempts_log_path(out_path: Path) -> Path:
    """run.h5 -> run.attempts.log: every attempt's log lines, which a job's own log
    (rewritten by each attempt) does not keep."""
    return out_path.with_name(f"{out_path.stem}.attempts.log")


def attempts_log(out_paths: list[Path]):
    """A `log` that prints and also appends each line to every seed's attempts log, which this
    attempt opens with a line saying when and where it started."""
    paths = [attempts_log_path(out) for out in out_paths]
    for path in paths:
        check_writable(path)

    def log(line: str, flush: bool = False) -> None:
        print(line, flush=flush)
        for path in list(paths):
            try:
                with path.open("a") as attempts:
                    attempts.write(line + "\n")
            except OSError as err:  # a full disk must not stop training for a copy of the log
                paths.remove(path)
                print(f"{path}: cannot append ({err.strerror or err}); not kept there", flush=True)

    started = datetime.now(UTC).isoformat(timespec="seconds")
    for path in paths:
        with path.open("a") as attempts:
            attempts.write(f"--- attempt started {started} (process {os.getpid()})\n")
    return log


def stop_on_signals():
    """A `stop()` for `train` that turns true on SIGTERM (what SLURM sends before it kills a job
    at its time limit or on preemption) or SIGINT (Ctrl-C): training finishes its step, writes
    a checkpoint and exits. A second Ctrl-C interrupts at once."""
    requested = threading.Event()

    def on_sigint(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
    signal.signal(signal.SIGINT, on_sigint)
    return requested.is_set


if __name__ == "__main__":
    main()
