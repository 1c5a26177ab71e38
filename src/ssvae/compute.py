"""Where and how the training step runs: device, CPU threads, subnormal floats, TF32, and the
step itself, eager or compiled, with a fallback to eager when compiling fails."""

import argparse
import os
import platform
from pathlib import Path

import torch
import torch._dynamo.utils
import torch._inductor.config

from ssvae.config import ConfigError

# The calls of a compiled step that may still fail in compilation: dynamo and inductor compile
# the forward on the first call and the backward on its first backward pass; CUDA graph trees
# warm up on the first call and record on the second.
GUARDED_CALLS = 3


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device: {name!r} is not a torch device (auto, cpu or cuda[:N])"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r}, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {name!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    return device


def resolve_compile(choice: str, device: torch.device) -> bool:
    """Whether to compile the step: "on", "off", or "auto", which compiles on CUDA only (where CUDA
    graphs remove the per-kernel launch cost; on CPU inductor's kernels were slower here)."""
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def set_tf32(allowed: bool) -> None:
    """TF32 (10-bit mantissa) float32 matmuls on CUDA: faster on tensor cores, less exact."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def flush_subnormals(device: torch.device, flush: bool) -> None:
    """On CPU, make subnormal floats (float32 below ~1.2e-38) zero in every operation. Relaxed
    one-hots such as softmax(3 (logits + g)) hold values like exp(-100), and CPUs that handle
    subnormals in microcode run a matmul fed with them up to ten times slower. GPUs are not
    slowed by them; there nothing changes."""
    if device.type == "cpu":
        torch.set_flush_denormal(flush)


def use_threads(requested: int) -> int:
    """Set torch's CPU threads to those requested (0: all), never more than the CPUs this process
    may run on: oversubscribed cores slow every step."""
    available = len(os.sched_getaffinity(0))
    torch.set_num_threads(min(requested, available) if requested > 0 else available)
    return torch.get_num_threads()


def device_name(device: torch.device, detailed: bool = False) -> str:
    """The GPU's name, or "cpu" (what a run file records); `detailed`: on CPU the processor's
    model and how many CPUs this process has (what the benchmark reports)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if not detailed:
        return str(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    name = models[0] if models else platform.processor() or platform.machine()
    return f"{name} ({len(os.sched_getaffinity(0))} CPUs)"


def versions() -> dict[str, str]:
    """The torch build and the CUDA it was built for ("none" for a CPU build)."""
    return {"torch_version": str(torch.__version__), "cuda_version": torch.version.cuda or "none"}


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the step runs: the options ssvae-train and ssvae.bench share."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]"
    )
    parser.add_argument(
        "--threads",
        type=non_negative_int,
        default=0,
        help="CPU threads, at most those available (0: all)",
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the step through torch.compile, with CUDA graphs on CUDA (auto: on CUDA only); "
        "if compiling fails, the step runs eagerly and the log says why",
    )
    parser.add_argument(
        "--tf32", choices=("on", "off"), default="off", help="allow TF32 matmuls on CUDA"
    )
    parser.add_argument(
        "--flush-subnormals",
        choices=("on", "off"),
        default="on",
        help="on CPU, treat floats below ~1.2e-38 as 0 (subnormals stall CPU matmuls)",
    )


def apply_compute_options(args: argparse.Namespace) -> tuple[torch.device, bool]:
    """Set the threads, subnormal flushing and TF32 as asked; the device, and whether to compile
    the step."""
    device = pick_device(args.device)
    # Before the threads: torch's CPU worker threads inherit the setting when they start.
    flush_subnormals(device, args.flush_subnormals == "on")
    use_threads(args.threads)
    set_tf32(args.tf32 == "on")
    return device, resolve_compile(args.compile, device)


def compile_forward(forward, on_cuda: bool):
    """`forward` through torch.compile, which on CUDA also captures it (forward and backward) as
    CUDA graphs and replays them."""
    # Random numbers from torch's own generator, as in eager mode, rather than inductor's: the
    # compiled step then gives the eager step's numbers up to float rounding.
    torch._inductor.config.fallback_random = True
    # Forget steps compiled for other models in this process (the benchmark, tests): every
    # model's step is one function to dynamo, and past a few recompilations of it dynamo stops
    # compiling and runs it eagerly, silently. So one compiled step is live at a time: a step
    # compiled earlier in the process is compiled again if it is called after this.
    torch._dynamo.reset()
    compiled = torch.compile(forward, mode="reduce-overhead" if on_cuda else "default")

    def compiled_forward(*args):
        # A new training step: the graphs' outputs of the last step are no longer read.
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return compiled_forward


def error_summary(error: BaseException) -> str:
    """The error and its root cause, on one line: compile errors wrap the one that says why."""
    root = error
    # Dynamo keeps the backend's error as `inner_exception` rather than as the cause.
    while (inner := root.__cause__ or getattr(root, "inner_exception", None)) is not None:
        root = inner
    message = next((line for line in str(root).splitlines() if line.strip()), "")
    summary = type(error).__name__
    if root is not error:
        summary += f" from {type(root).__name__}"
    return f"{summary}: {message.strip()[:300]}" if message else summary


class TrainingStep:
    """The forward and backward pass of one training step, `forward(*args) -> (objective,
    metrics)` run eagerly or compiled. Compiling happens lazily, in the first calls; if one of
    them fails (an inductor or driver error, a graph that refuses capture), the random-number
    states and the model's buffers are put back as they were before that call, `log` gets one
    line saying why, and the step runs eagerly from then on. A failure in the first call gives
    the eager run's numbers exactly; in a later one, those of a run whose first steps were
    compiled (equal up to float rounding)."""

    def __init__(self, forward, model: torch.nn.Module, compiled: bool, on_cuda: bool, log):
        self.eager_forward = forward
        self.forward = compile_forward(forward, on_cuda) if compiled else forward
        self.model, self.on_cuda, self.log = model, on_cuda, log
        self.guarded_calls = GUARDED_CALLS if compiled else 0
        self.fallback = ""  # why compiling failed, if it did
        # The process-wide count of graphs inductor declined to capture, before this step.
        self.skips_before = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]

    @property
    def compiled(self) -> bool:
        return self.forward is not self.eager_forward

    @property
    def captured(self) -> bool:
        """Whether the compiled step replays CUDA graphs (inductor skips capturing some graphs,
        e.g. one that reads a CPU tensor, and says so only in its debug log)."""
        skips = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]
        return self.compiled and self.on_cuda and skips == self.skips_before

    def __call__(self, *args):
        """Run the step's forward and backward pass: the objective (detached) and the metrics."""
        if self.guarded_calls == 0:
            return self.forward_backward(*args)
        self.guarded_calls -= 1
        random_states = self.model.random.get_state()
        buffers = [buffer.clone() for buffer in self.model.buffers()]
        try:
            return self.forward_backward(*args)
        except Exception as error:  # whatever compiling raises: the eager step still trains
            self.fallback = error_summary(error)
            self.log(f"compiling the step failed ({self.fallback}); training eagerly", flush=True)
        self.model.random.set_state(random_states)
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        self.model.zero_grad(set_to_none=True)
        self.forward, self.guarded_calls = self.eager_forward, 0
        return self.forward_backward(*args)

    def forward_backward(self, *args):
        objective, metrics = self.forward(*args)
        objective.sum().backward()  # the seeds' weights are apart: each gets its own gradient
        return objective.detach(), metrics

    def how_it_ran(self) -> dict:
        """For the run file: whether the step ran compiled, captured as CUDA graphs, and why it
        fell back to eager if it did."""
        return {
            "step_compiled": self.compiled,
            "step_captured": self.captured,
            "compile_fallback": self.fallback,
        }
