"""The SLURM profile, on a real one-node SLURM cluster that this module brings up and tears down:
the smoke preset submitted through snakemake's slurm executor builds what the local run builds,
and only the training jobs go to SLURM, each with the profile's requests and the GPU the config
asks for."""

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import GPU_TYPE, PARTITION, Cluster, missing_requirements
from workflow_helpers import RUNS, SMOKE, assert_smoke_outputs, copy_workflow, run_file

PROFILE = "workflow/profiles/slurm"
ACCOUNT = "ssvae-test"
# The test cluster's values, edited into the profile's "your cluster" block as a user would.
SITE = {
    "slurm_account": ACCOUNT,
    "slurm_partition": PARTITION,
    "gpu_model": GPU_TYPE,
    "mem_mb": 2000,
    "runtime": 30,
}
# The smoke preset's training settings, with the seeds of a run trained together and a GPU per
# job, as config.yaml asks.
PACKED = (
    "train_resources={seeds_per_job: 2, threads: 1, gpus: 1, device: cpu, checkpoint_every: 1, "
    "compile: false, tf32: false}"
)
HANG_GUARD_S = 1200  # snakemake waits for ever on a status it cannot read: fail instead

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    reason = missing_requirements()
    if reason is not None:
        # CI installs the packages and sets SSVAE_REQUIRE_SLURM: there, this fails, never skips.
        if os.environ.get("SSVAE_REQUIRE_SLURM"):
            pytest.fail(f"SLURM test cannot run: {reason}", pytrace=False)
        pytest.skip(f"SLURM test skipped: {reason}")
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        seconds = cluster.start()
        print(f"test SLURM cluster up in {seconds:.1f} s")
        for command in (["add", "account", ACCOUNT], ["add", "user", "root", f"account={ACCOUNT}"]):
            subprocess.run(["sacctmgr", "-i", *command], check=True, capture_output=True)
        yield cluster
    finally:
        cluster.stop()


def adapt_profile(workdir: Path) -> dict:
    """Set the profile's site values to the test cluster's; everything else stays as shipped."""
    path = workdir / PROFILE / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    assert set(SITE) <= set(profile["default-resources"]), "the site block names these"
    profile["default-resources"] |= SITE
    path.write_text(yaml.safe_dump(profile))
    return profile


def sacct_jobs() -> list[dict]:
    # SubmitLine last: the sbatch command line it records may itself hold the delimiter.
    fields = [
        "JobName", "State", "Partition", "Account", "ReqTRES", "Timelimit", "Comment", "SubmitLine"
    ]  # fmt: skip
    result = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--starttime", "now-1day", "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        dict(zip(fields, line.split("|", len(fields) - 1), strict=True))
        for line in result.stdout.splitlines()
    ]


def test_smoke_preset_through_the_slurm_profile(
    cluster: Cluster, tmp_path: Path, mnist_dir: Path
) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    adapt_profile(workdir)
    command = [
        "snakemake", "--workflow-profile", PROFILE, "--configfile", SMOKE,
        "--slurm-init-seconds-before-status-checks", "1",
        "--config", f"mnist_sources=[{mnist_dir}]", PACKED,
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    print(f"snakemake through SLURM took {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-4000:]
    assert_smoke_outputs(workdir, seeds_per_job=2)

    # Training went to SLURM, one job per run training its two seeds together, each asking for
    # the one GPU train_resources.gpus says; every other rule ran on the submitting node.
    jobs = sacct_jobs()
    assert len(jobs) == len(RUNS), jobs
    for job in jobs:
        assert job["State"] == "COMPLETED", job
        assert job["Comment"].startswith("rule_train_seeds_1_2"), job
        assert (job["Partition"], job["Account"]) == (PARTITION, ACCOUNT)
        assert "gres/gpu=1" in job["ReqTRES"] and "mem=2000M" in job["ReqTRES"], job
        assert job["Timelimit"] == "00:30:00"
        # SIGTERM 120 s before the limit, so training checkpoints before SLURM kills it.
        assert "--signal=TERM@120" in job["SubmitLine"], job
    local_rules = result.stderr.count("localrule ")
    assert local_rules >= 10  # download, prepare, splits, aggregate, figures, report, all

    # Forcing one seed's run file on SLURM retrains its whole pack job there: the retrain
    # requests reach the job on the shared filesystem, and the store stands in for neither seed.
    target = str(run_file(workdir, "MLP", 1).relative_to(workdir))
    forced = subprocess.run(
        [*command[:3], target, *command[3:], "--forcerun", target],
        cwd=workdir, capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-4000:]
    assert len(sacct_jobs()) == len(RUNS) + 1
    for seed in (1, 2):
        attempts = run_file(workdir, "MLP", seed).with_name("run.attempts.log").read_text()
        last = attempts.split("--- attempt started")[-1]
        assert "epoch   2/2" in last and "result store" not in last
