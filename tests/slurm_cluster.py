"""A real one-node SLURM cluster on localhost for the tests: munge, a private MariaDB, slurmdbd
(so that `sacct` works, as on a real cluster), slurmctld and slurmd with one fake GPU. Started
by hand (there is no systemd) and stopped by the PIDs in their pid files.

Needs root and Debian's slurm-wlm, slurmdbd, munge and mariadb-server. slurm.conf must live at
/etc/slurm/slurm.conf: a job step strips SLURM_CONF before its inner srun.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
DBD_CONF = Path("/etc/slurm/slurmdbd.conf")
OURS = "# written by the ssvae test suite\n"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")
PARTITION, GPU_TYPE, CLUSTER = "debug", "fake", "ssvae-test"
DB_PORT = 3307


def missing_requirements() -> str | None:
    """Why the cluster cannot be brought up here, or None."""
    if os.geteuid() != 0:
        return "the test SLURM cluster needs root"
    absent = [
        name
        for name in DAEMONS + ("sbatch", "sacct", "mariadb-install-db")
        if shutil.which(name) is None and not Path("/usr/sbin", name).exists()
    ]
    if absent:
        return (
            f"not installed: {', '.join(absent)} (Debian: slurm-wlm slurmdbd munge mariadb-server)"
        )
    for conf in (SLURM_CONF, GRES_CONF, DBD_CONF):
        if conf.exists() and not conf.read_text().startswith(OURS):
            return f"{conf} exists and is not the test suite's: refusing to touch a real cluster"
    return None


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OURS + text)
    path.chmod(mode)


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"test SLURM cluster: {what} did not happen in {timeout_s} s")
        time.sleep(0.05)


def _succeeds(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.pid_files = {name: root / f"{name}.pid" for name in DAEMONS}
        self.mariadb = None  # our child, where the other daemons detach

    def start(self) -> float:
        """Bring every daemon up; returns the seconds it took."""
        started = time.monotonic()
        root = self.root
        for directory in ("state", "spool", "db", "log"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._start_mariadb()
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        _write(
            DBD_CONF,
            (
                f"AuthType=auth/munge\nDbdHost=localhost\nSlurmUser=root\n"
                f"PidFile={self.pid_files['slurmdbd']}\nLogFile={root}/log/slurmdbd.log\n"
                f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
                f"StoragePort={DB_PORT}\nStorageUser=root\nStorageLoc=slurm_acct_db\n"
            ),
            mode=0o600,
        )
        _write(GRES_CONF, f"NodeName={self.node} Name=gpu Type={GPU_TYPE} File=/dev/null\n")
        _write(
            SLURM_CONF,
            (
                f"ClusterName={CLUSTER}\nSlurmctldHost={self.node}\nSlurmUser=root\n"
                "AuthType=auth/munge\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
                "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
                "SchedulerType=sched/backfill\nReturnToService=2\nMpiDefault=none\n"
                # Each job gets its own memory share, so jobs run side by side.
                "DefMemPerCPU=1000\n"
                "GresTypes=gpu\nMinJobAge=300\nKillWait=10\n"
                "AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
                "AccountingStorageTRES=gres/gpu\nAccountingStoreFlags=job_comment\n"
                "JobAcctGatherType=jobacct_gather/none\n"
                f"StateSaveLocation={root}/state\nSlurmdSpoolDir={root}/spool\n"
                f"SlurmctldPidFile={self.pid_files['slurmctld']}\n"
                f"SlurmdPidFile={self.pid_files['slurmd']}\n"
                f"SlurmctldLogFile={root}/log/slurmctld.log\nSlurmdLogFile={root}/log/slurmd.log\n"
                f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} "
                f"RealMemory={memory_mb} Gres=gpu:{GPU_TYPE}:1 State=UNKNOWN\n"
                f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE "
                "State=UP\n"
            ),
        )
        subprocess.run(["slurmdbd"], check=True)
        _wait(lambda: _succeeds("sacctmgr", "-n", "show", "cluster"), 30, "slurmdbd answering")
        subprocess.run(["sacctmgr", "-i", "add", "cluster", CLUSTER], capture_output=True)
        subprocess.run(["slurmctld", "-c"], check=True)
        subprocess.run(["slurmd"], check=True)
        _wait(self._node_idle, 30, "the node becoming idle")
        return time.monotonic() - started

    def _start_munge(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True)
        socket_dir = Path("/run/munge")
        socket_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["munged", "--force", f"--pid-file={self.pid_files['munged']}"], check=True)
        _wait(lambda: _succeeds("sh", "-c", "munge -n | unmunge"), 10, "munge answering")

    def _start_mariadb(self) -> None:
        datadir = self.root / "db"
        subprocess.run(
            [
                "mariadb-install-db",
                "--user=root",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        self.mariadb = subprocess.Popen(
            [
                "mariadbd",
                "--user=root",
                f"--datadir={datadir}",
                f"--port={DB_PORT}",
                "--bind-address=127.0.0.1",
                f"--socket={self.root}/mysql.sock",
                f"--pid-file={self.pid_files['mariadbd']}",
                f"--log-error={self.root}/log/db.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(
            lambda: _succeeds("mariadb-admin", f"--socket={self.root}/mysql.sock", "ping"),
            30,
            "MariaDB answering",
        )

    def _node_idle(self) -> bool:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        return result.stdout.strip() == "idle"

    def stop(self) -> None:
        """Stop every daemon by its pid file and remove the configuration."""
        for name in DAEMONS:
            pid_file = self.pid_files[name]
            if not pid_file.exists():
                continue
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                continue
            if name == "mariadbd" and self.mariadb is not None:
                self.mariadb.wait(timeout=30)
            else:
                _wait(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, f"{name} stopping")
        for conf in (SLURM_CONF, GRES_CONF, DBD_CONF):
            conf.unlink(missing_ok=True)
