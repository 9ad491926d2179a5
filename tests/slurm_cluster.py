"""A throwaway single-node SLURM cluster on loopback, for testing the workflow's SLURM profile.

Debian's slurm-wlm and munge, run as root from a temporary folder: munged on its own socket,
slurmctld and slurmd on free ports, all state and logs in that folder, no accounting database.
Nothing under /etc is written, so a cluster already configured on the machine is left alone.
Clients (sbatch, squeue, and Snakemake's SLURM executor) find it through ``SLURM_CONF``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]
PARTITION = "debug"


def which(name: str) -> str | None:
    """A SLURM or munge program; the daemons live in /usr/sbin, which a PATH may lack."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/sbin")


def install_packages() -> None:
    """apt-get install slurm-wlm and munge (as root), unless their programs are already there."""
    if all(which(name) for name in [*DAEMONS, "sbatch", "squeue", "srun"]):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get on the machine holds the lock
    for cmd in (["apt-get", *wait, "update", "-qq"], ["apt-get", *wait, "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line() -> str:
    """This machine's real CPUs, topology and memory (``slurmd -C``) as the node ``localhost``."""
    line = subprocess.run(
        [which("slurmd"), "-C"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    return re.sub(r"^NodeName=\S+", "NodeName=localhost NodeAddr=127.0.0.1", line)


def slurm_conf(root: Path, munge_socket: Path) -> str:
    # MinJobAge keeps finished jobs visible to squeue long enough for Snakemake's status checks:
    # with no accounting database, sacct cannot answer them.
    return "\n".join(
        [
            "ClusterName=vitpeft-test",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MinJobAge=600",
            "ReturnToService=2",
            node_line(),
            f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF: run clients with it
    partition: str = PARTITION

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True).stdout

    def logs(self) -> str:
        return "\n".join(
            f"==> {path.name} <==\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted([*self.root.glob("*.log"), *self.root.glob("*.out")])
        )


def wait_for(check, what: str, cluster: Cluster, daemon=None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (daemon is None or daemon.poll() is None):
        with contextlib.suppress(subprocess.CalledProcessError):
            if check():
                return
        time.sleep(0.5)
    status = "exited" if daemon is not None and daemon.poll() is not None else f"not ready after {timeout}s"
    raise RuntimeError(f"SLURM test cluster: {what} {status}\n{cluster.logs()}")


@contextlib.contextmanager
def local_cluster(root: Path) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd under ``root``; stop every one of them on exit."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # munged refuses a socket or key in a folder others can write to
    for name in ("state", "spool"):
        (root / name).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    munge_socket = root / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, munge_socket))
    # Inside a job, Snakemake's jobstep executor runs the rule through srun, but first drops every
    # SLURM_* variable, SLURM_CONF too (a real cluster keeps its config at the default path or
    # serves it from slurmctld). So the job's srun gets the config from this wrapper instead.
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {which("srun")} "$@"\n')
    srun.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    cluster = Cluster(root, {**os.environ, "SLURM_CONF": str(conf), "PATH": path})

    commands = {
        "munged": [
            which("munged"),
            "--foreground",
            "--force",  # its socket sits in a folder only root can enter: only root's jobs use it
            f"--socket={munge_socket}",
            f"--key-file={key}",
            f"--pid-file={root / 'munged.pid'}",
            f"--log-file={root / 'munged.log'}",
            f"--seed-file={root / 'munged.seed'}",
        ],
        "slurmctld": [which("slurmctld"), "-D", "-i", "-f", str(conf)],
        "slurmd": [which("slurmd"), "-D", "-N", "localhost", "-f", str(conf)],
    }
    daemons: list[subprocess.Popen] = []
    try:
        for name, cmd in commands.items():
            out = (root / f"{name}.out").open("w")
            daemons.append(subprocess.Popen(cmd, env=cluster.env, stdout=out, stderr=subprocess.STDOUT))
            out.close()
            if name == "munged":
                wait_for(munge_socket.exists, "munged", cluster, daemons[-1])
            if name == "slurmctld":
                wait_for(lambda: "UP" in cluster.run("scontrol", "ping"), "slurmctld", cluster, daemons[-1])
        node_idle = lambda: cluster.run("sinfo", "-h", "-N", "-o", "%T").strip() == "idle"
        wait_for(node_idle, "slurmd", cluster, daemons[-1])
        yield cluster
    finally:
        try:
            if len(daemons) == len(commands):  # jobs left by a failed test: end their processes too
                with contextlib.suppress(subprocess.CalledProcessError):
                    cluster.run("scancel", "--full", f"--partition={PARTITION}")
                wait_for(lambda: not cluster.run("squeue", "--noheader"), "cancelling the jobs", cluster)
        finally:
            for daemon in reversed(daemons):  # slurmd, slurmctld, then munged
                daemon.terminate()
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
