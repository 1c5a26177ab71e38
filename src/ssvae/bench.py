"""How fast training runs, against what the machine can do: `python -m ssvae.bench`.

For each run of the comparison: steps per second over a measured window after warm-up, the
training step's matmul FLOPs (counted from the shapes by torch's FLOP counter, forward and
backward), the FLOP rate that makes, and its ratio to the machine's sustained dense matmul rate
at the same precision, timed right after each window of the step. With --seeds-per-job, the
same for N seeds trained together: seed-steps per second and the torch operators dispatched per
seed-step (each one a kernel launch, or more, on a GPU). With --jobs, N processes train at once
(on one GPU, to see how they share it). It also times snakemake's dry run and no-op rebuild of
the full comparison.
Writes the table to stdout and everything to results/bench/bench.json.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ssvae import bench_baseline, bench_workflow, compute, loop, runfile, step
from ssvae.cli import entry_point_parser
from ssvae.config import TrainConfig, run_settings
from ssvae.errors import exit_on_user_error
from ssvae.images import seed_images
from ssvae.io import write_atomic
from ssvae.nn import SeedLinear

MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}
WINDOWS = 5  # the measured window is timed in this many parts; rates are their median


def evaluations(cfg: TrainConfig) -> int:
    """Evaluations of a whole run: validation every eval_every epochs and after the last (32 for
    epochs 0..300 every 10, the test split included)."""
    validations = len(range(0, cfg.epochs + 1, cfg.eval_every))
    return validations + (cfg.epochs % cfg.eval_every != 0) + 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulReference:
    """What the machine can do at the moment: the sustained float32 rate of a large square
    matmul (TF32 when it is allowed), timed in a short window right after each of the step's
    windows, so that a step and its reference see the same machine (a shared one drifts by a
    fifth within minutes)."""

    def __init__(self, device: torch.device, seconds_per_window: float):
        n = MATMUL_SIZE[device.type]
        self.device, self.seconds_per_window = device, seconds_per_window
        self.flops = 2 * n**3
        self.a, self.b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        self.out = torch.empty(n, n, device=device)
        for _ in range(3):
            torch.mm(self.a, self.b, out=self.out)
        synchronize(device)

    def flops_per_s(self) -> float:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < self.seconds_per_window:
            torch.mm(self.a, self.b, out=self.out)
            synchronize(self.device)
            count += 1
        return self.flops * count / (time.perf_counter() - started)


def time_windows(training: step.Training, per_window: int, flops_per_step: int,
                 reference: MatmulReference | None, prefix: str = "") -> dict:  # fmt: skip
    """The step timed in WINDOWS windows of `per_window` steps, each followed by the matmul
    reference's window: ms per step, and the ratio of the step's FLOP rate to the matmul's, as
    medians over the windows (on a shared machine a few seconds can run slow). `prefix` names
    the keys."""
    window_seconds, ratios, matmul_rates = [], [], []
    for _ in range(WINDOWS):
        window_seconds.append(time_steps(training, per_window))
        if reference is not None:
            matmul_rates.append(reference.flops_per_s())
            ratios.append(flops_per_step * per_window / window_seconds[-1] / matmul_rates[-1])
    measured = {
        "window_ms_per_step": [1000 * s / per_window for s in window_seconds],
        "ms_per_step": 1000 * statistics.median(window_seconds) / per_window,
    }
    if reference is not None:
        measured |= {
            "window_matmul_flops_per_s": matmul_rates,
            "matmul_flops_per_s": statistics.median(matmul_rates),
            "window_ratio": ratios,
            "ratio": statistics.median(ratios),
        }
    return {prefix + key: value for key, value in measured.items()}


class OperatorCount(TorchDispatchMode):
    """Counts the torch operators dispatched while it is active, and among them the views
    (a view, transpose or unsqueeze moves no data and launches no kernel)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        self.views += func.is_view
        return func(*args, **(kwargs or {}))


def eager_step(training: step.Training, during=None) -> None:
    """One training step of `training`, taken eagerly inside `during`: a compiled step would
    recompile around a dispatch mode or hooks, and .item() in a hook breaks its graph."""
    eager = replace(training, step_fn=step.training_step(training.model, training.images, False))
    with during or contextlib.nullcontext():
        eager.run(1)
    training.progress = eager.progress


def step_operators(training: step.Training) -> int:
    """Operators of one whole eager training step (batch, forward, backward, L2, clipping,
    Adam) for all the seeds of the model; the step is taken."""
    counter = OperatorCount()
    eager_step(training, counter)
    return counter.count


def step_flops(training: step.Training) -> int:
    """Matmul FLOPs of one training step: the forward pass and its backward pass (the step is
    not applied)."""
    n_seeds = training.model.random.n_seeds
    device = training.images.train_x.device
    index = torch.arange(training.cfg.batch_size, device=device).expand(n_seeds, -1)
    coefficients = step.annealing_coefficients(0, training.cfg, device)[-1]
    eager = step.training_step(training.model, training.images, compiled=False)
    with FlopCounterMode(display=False) as counter:
        eager(index, coefficients)
    training.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(training: step.Training, n_steps: int) -> float:
    """Seconds for n_steps training steps, across epoch boundaries as training crosses them."""
    device = training.images.train_x.device
    synchronize(device)
    started = time.perf_counter()
    training.run(n_steps)
    synchronize(device)
    return time.perf_counter() - started


def subnormal_shares(training: step.Training) -> dict:
    """The share of subnormal values in what one training step touches: every Linear's input
    (the matmuls), the gradients and Adam's moments. The five largest of the inputs and the
    five largest of the rest, by name."""
    tiny = torch.finfo(torch.float32).tiny

    def share(tensor: torch.Tensor) -> float:
        return ((tensor != 0) & (tensor.abs() < tiny)).float().mean().item()

    model, optimizer = training.model, training.optimizer
    found = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda module, inputs, name=name: found.__setitem__(f"{name} input", share(inputs[0]))
        )
        for name, module in model.named_modules()
        if isinstance(module, SeedLinear)
    ]
    try:
        eager_step(training)
    finally:
        for hook in hooks:
            hook.remove()
    for name, param in model.named_parameters():
        state = optimizer.state.get(param, {})
        found[f"{name} grad"] = share(param.grad) if param.grad is not None else 0.0
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state:
                found[f"{name} {moment}"] = share(state[moment])
    inputs = {name: value for name, value in found.items() if name.endswith(" input")}
    others = {name: value for name, value in found.items() if name not in inputs}
    largest = [sorted(group.items(), key=lambda item: -item[1])[:5] for group in (inputs, others)]
    return {name: value for group in largest for name, value in group if value > 0}


def time_evaluation(training: step.Training) -> float:
    device = training.images.train_x.device
    synchronize(device)
    started = time.perf_counter()
    loop.evaluate(training.model, *training.images.valid, training.cfg.batch_size)
    synchronize(device)
    return time.perf_counter() - started


def bench_run(
    cfg: TrainConfig,
    data_path: Path,
    device: torch.device,
    compiled: bool,
    warmup_steps: int,
    steps: int,
    late_after: int = 0,
    log=print,
    seed_ids: list[int] | None = None,
    reference: MatmulReference | None = None,
) -> dict:
    """Time the step from a fresh start and, with `late_after`, again once training has run that
    many steps on real MNIST: late states hold values a fresh one does not (subnormal floats).
    With `seed_ids`, the step of those seeds trained together (default: the config's seed); with
    `reference`, its ratio to the matmul's rate."""
    seed_ids = seed_ids or [cfg.seed]
    images = seed_images(data_path, seed_ids, device)
    training = step.Training.start(cfg, images, seed_ids, device, compiled, log)
    flops = step_flops(training)
    operators = step_operators(training)
    warmup_seconds = time_steps(training, warmup_steps)
    per_window = max(1, steps // WINDOWS)
    fresh = time_windows(training, per_window, flops, reference)
    eval_seconds = time_evaluation(training)
    steps_per_s = 1000 / fresh["ms_per_step"]
    steps_per_run = (cfg.epochs + 1) * cfg.steps_per_epoch
    late = {}
    trained = warmup_steps + per_window * WINDOWS
    if late_after > trained:
        time_steps(training, late_after - trained)
        late = time_windows(training, per_window, flops, reference, prefix="late_")
        late["late_after_steps"] = late_after
        late["late_subnormal_shares"] = subnormal_shares(training)
    return {
        **fresh,
        **late,
        "model": cfg.model,
        "seeds": len(seed_ids),
        "seed_steps_per_s": len(seed_ids) * steps_per_s,
        "operators_per_step": operators,
        "operators_per_seed_step": operators / len(seed_ids),
        # What ran: a step asked to compile that fell back to eager is timed eagerly.
        "step": runfile.how_the_step_ran(training.step_fn.how_it_ran()),
        "steps_measured": per_window * WINDOWS,
        "warmup_steps": warmup_steps,
        "warmup_s": warmup_seconds,
        "steps_per_s": steps_per_s,
        "s_per_epoch": cfg.steps_per_epoch / steps_per_s,
        "eval_s": eval_seconds,
        "s_per_run": steps_per_run / steps_per_s + evaluations(cfg) * eval_seconds,
        "flops_per_step": flops,
        "achieved_flops_per_s": flops * steps_per_s,
    }


def bench_parallel_jobs(run: str, n_jobs: int, options: dict) -> dict:
    """n_jobs processes training the same run at once, each a bench worker given `options`
    (option -> value: --config, --data, --device, --compile, ...); their summed throughput."""
    command = [sys.executable, "-m", "ssvae.bench", "--worker", "--runs", run]
    # The throughput of jobs side by side, from a fresh start.
    for option, value in (options | {"--late-after": "0"}).items():
        command += [option, str(value)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(n_jobs)]
    results = []
    for worker in workers:
        out, _ = worker.communicate()
        if worker.returncode != 0:
            sys.exit(f"ssvae.bench: error: a job of {n_jobs} parallel jobs failed")
        results.append(json.loads(out.splitlines()[-1]))
    total = sum(result["steps_per_s"] for result in results)
    return {
        "run": run,
        "jobs": n_jobs,
        "steps_per_s_per_job": [result["steps_per_s"] for result in results],
        "step_per_job": [result["step"] for result in results],
        "steps_per_s_total": total,
        "achieved_flops_per_s_total": total * results[0]["flops_per_step"],
    }


def worker_options(args: argparse.Namespace) -> dict[str, str]:
    """The options of this bench that its parallel workers take too."""
    names = ("config", "data", "device", "warmup_steps", "steps", "compile", "threads", "tf32",
             "flush_subnormals")  # fmt: skip
    return {f"--{name.replace('_', '-')}": str(getattr(args, name)) for name in names}


def print_table(report: dict) -> None:
    print(f"\ndevice: {report['device']}; step {report['step']}; tf32 {report['tf32']}")
    matmul = [row["matmul_flops_per_s"] for row in report["models"].values()]
    print(
        f"sustained float32 matmul, timed beside each window: {min(matmul) / 1e9:,.1f}-"
        f"{max(matmul) / 1e9:,.1f} GFLOP/s (medians per run)"
    )
    header = (
        f"{'run':<24} {'ms/step':>8} {'steps/s':>8} {'s/epoch':>8} {'s/run':>8} "
        f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'ratio':>6}  windows ms/step"
    )
    print(header)
    print("-" * len(header))
    for run, row in report["models"].items():
        print(
            f"{run:<24} {row['ms_per_step']:>8.2f} {row['steps_per_s']:>8.1f} "
            f"{row['s_per_epoch']:>8.2f} {row['s_per_run']:>8.0f} "
            f"{row['flops_per_step'] / 1e9:>10.2f} {row['achieved_flops_per_s'] / 1e9:>8.1f} "
            f"{row['ratio']:>6.2f}  {min(row['window_ms_per_step']):.1f}-"
            f"{max(row['window_ms_per_step']):.1f}"
        )
    for run, row in report["models"].items():
        if "late_ms_per_step" in row:
            subnormal = ", ".join(
                f"{name} {value:.1%}" for name, value in row["late_subnormal_shares"].items()
            )
            print(
                f"{run}: after {row['late_after_steps']} steps "
                f"{row['late_ms_per_step']:.2f} ms/step "
                f"({row['late_ms_per_step'] / row['ms_per_step']:.2f} x fresh), ratio "
                f"{row['late_ratio']:.2f}; subnormal: "
                f"{subnormal or 'none'}"
            )
    print_packing(report.get("seeds_per_job", {}))
    for row in report.get("parallel_jobs", []):
        per_job = ", ".join(f"{rate:.1f}" for rate in row["steps_per_s_per_job"])
        print(
            f"{row['run']}: {row['jobs']} jobs at once: {row['steps_per_s_total']:.1f} steps/s "
            f"in total ({per_job} per job)"
        )
    workflow = report.get("workflow")
    if workflow:
        if workflow["dry_run_s"] is not None:
            print(
                f"snakemake dry run, nothing built ({workflow['training_jobs']} training jobs): "
                f"{workflow['dry_run_s']:.2f} s"
            )
        print(f"snakemake dry run, all built: {workflow['dry_run_built_s']:.2f} s")
        print(f"snakemake no-op rebuild: {workflow['noop_rebuild_s']:.2f} s")


def print_packing(packing: dict) -> None:
    """Seeds trained together against one seed alone, per run."""
    if any(len(rows) > 1 for rows in packing.values()):
        print(
            f"\n{'run':<24} {'seeds':>5} {'ms/step':>8} {'seed-steps/s':>12} {'x 1 seed':>8} "
            f"{'ops/seed-step':>13} {'x 1 seed':>8}  late ms/step"
        )
        for run, rows in packing.items():
            alone = rows["1"]
            for n_seeds, row in rows.items():
                late = f"{row['late_ms_per_step']:.1f}" if "late_ms_per_step" in row else "-"
                print(
                    f"{run:<24} {n_seeds:>5} {row['ms_per_step']:>8.1f} "
                    f"{row['seed_steps_per_s']:>12.2f} "
                    f"{row['seed_steps_per_s'] / alone['seed_steps_per_s']:>8.2f} "
                    f"{row['operators_per_seed_step']:>13.1f} "
                    f"{row['operators_per_seed_step'] / alone['operators_per_seed_step']:>8.3f}"
                    f"  {late}"
                )


def command_line():
    parser = entry_point_parser("python -m ssvae.bench", __doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=Path("config.yaml"), help="the workflow's config"
    )
    parser.add_argument("--runs", nargs="+", help="run ids (default: the config's compare list)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("results/data/mnist.npz"),
        help="prepared MNIST arrays, as the workflow writes them",
    )
    compute.add_compute_options(parser)
    parser.add_argument(
        "--warmup-steps", type=int, default=20, help="untimed steps first (compiling included)"
    )
    parser.add_argument("--steps", type=int, default=100, help="steps in the measured window")
    parser.add_argument(
        "--late-after",
        type=int,
        default=2000,
        help="measure the window again after this many training steps, a late-training state "
        "(epoch 4: an Intel Xeon ran epochs 3-6 ten times slower on subnormals; 0: fresh only)",
    )
    parser.add_argument(
        "--seeds-per-job",
        type=int,
        nargs="+",
        default=[1],
        help="also time N seeds of each run trained together (seeds 1..N), e.g. 1 2 5 10",
    )
    parser.add_argument(
        "--matmul-seconds",
        type=float,
        default=0.6,
        help="time the matmul reference this long after each of the step's windows",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="*",
        default=None,
        help="also time N jobs training at once (default on CUDA: 1 2 4)",
    )
    parser.add_argument(
        "--skip-workflow",
        action="store_true",
        help="do not time snakemake's dry run and no-op rebuild",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("results/bench/workflow"),
        help="where the workflow copy for the snakemake timings is built and kept",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/bench/bench.json"), help="JSON report to write"
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="instead, time this checkout's step against the code of git ref REF, alternately "
        "in --rounds rounds of one fresh process each (ssvae.bench_baseline); written to "
        "baseline.json beside --out",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of --baseline per run"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_args(argv):
    parser = command_line()
    args = parser.parse_args(argv)
    for name in ("warmup_steps", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.matmul_seconds <= 0:  # a window without a matmul has no rate to divide by
        parser.error(f"--matmul-seconds must be above 0, not {args.matmul_seconds}")
    if min(args.seeds_per_job) < 1:
        parser.error(f"--seeds-per-job must be at least 1, not {min(args.seeds_per_job)}")
    return args


def bench_runs(configs: dict, args, device: torch.device, compiled: bool) -> dict:
    """run -> number of seeds trained together -> bench_run's row: every run alone, then
    packed as --seeds-per-job asks."""
    packing = {run: {} for run in configs}
    reference = MatmulReference(device, args.matmul_seconds)
    for n_seeds in sorted(set(args.seeds_per_job) | {1}):
        for run, cfg in configs.items():
            row = bench_run(cfg, args.data, device, compiled, args.warmup_steps, args.steps,
                            args.late_after, seed_ids=list(range(1, n_seeds + 1)),
                            reference=reference)  # fmt: skip
            packing[run][n_seeds] = row
            if n_seeds == 1:
                print(f"{run}: {row['ms_per_step']:.2f} ms/step", flush=True)
            else:
                rate = row["seed_steps_per_s"]
                print(f"{run}, {n_seeds} seeds: {rate:.2f} seed-steps/s", flush=True)
    return packing


def compare_with_baseline(args, runs: list[str]) -> None:
    """Each run's step, this checkout against --baseline, alternately (ssvae.bench_baseline)."""
    options = worker_options(args) | {"--late-after": str(args.late_after)}
    del options["--config"]  # each side reads its own config.yaml
    with exit_on_user_error("ssvae.bench"):
        report = bench_baseline.compare(args.baseline, runs, args.rounds, options)
    out = args.out.with_name("baseline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(report, indent=2) + "\n").encode())
    bench_baseline.print_table(report)
    print(f"\nwritten to {out}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.data.is_file():
        sys.exit(
            f"ssvae.bench: error: {args.data} not found; build it first with "
            f"snakemake --cores 1 {args.data}"
        )
    with exit_on_user_error("ssvae.bench"):
        device, compiled = compute.apply_compute_options(args)
        config = yaml.safe_load(args.config.read_text())
        runs = args.runs or config["compare"]
        configs = {run: run_settings(config, run, seed=1) for run in runs}
    if args.worker:
        (cfg,) = configs.values()
        result = bench_run(
            cfg, args.data, device, compiled, args.warmup_steps, args.steps, args.late_after
        )
        print(json.dumps(result))
        return

    if args.baseline:
        compare_with_baseline(args, runs)
        return

    workflow = None
    if not args.skip_workflow:  # first: a failure there should not cost the timings below
        # The files the workflow fetched for --data: a local directory source, as offline.
        raw_dir = (args.data.parent / "mnist" / "raw").resolve()
        # The README runs the bench from the repository's root.
        workflow = bench_workflow.time_workflow(
            Path.cwd(), args.scratch, [str(raw_dir)], os.cpu_count()
        )
    packing = bench_runs(configs, args, device, compiled)
    models = {run: rows[1] for run, rows in packing.items()}
    jobs = args.jobs if args.jobs is not None else ([1, 2, 4] if device.type == "cuda" else [])
    report = {
        "device": compute.device_name(device, detailed=True)
        + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "step": "compiled" if compiled else "eager",
        "tf32": args.tf32 == "on",
        "matmul_size": MATMUL_SIZE[device.type],
        "models": models,
        "seeds_per_job": {
            run: {str(n): row for n, row in rows.items()} for run, rows in packing.items()
        },
        "parallel_jobs": [bench_parallel_jobs(runs[0], n, worker_options(args)) for n in jobs],
        "workflow": workflow,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".json.partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(args.out)
    print_table(report)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
