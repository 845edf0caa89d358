"""A single-node Slurm cluster on 127.0.0.1 for workflow tests: munged, slurmctld and slurmd.

The node declares one GPU through gres (with /dev/null as its device file), so Slurm schedules GPU
requests exactly as on a GPU node, on a machine without one. No accounting database: job records
stay in slurmctld for MinJobAge seconds, which is what `scontrol show job` and the executor
plugin's squeue status checks read. Needs root (the daemons run as root), Debian's slurm-wlm and
munge, and no other Slurm configured here: the cluster's slurm.conf is linked to the default path
while it runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NODE = "localhost"
PARTITION = "gpu"
FEATURE = "testgpu"
CPUS = 8
DAEMONS = ("munged", "slurmctld", "slurmd")
# Client commands inside jobs read this: the executor plugin starts `srun` there with every SLURM_*
# variable removed, SLURM_CONF included.
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
# Long enough for every job of a test run to stay visible to squeue and scontrol afterwards.
MIN_JOB_AGE_SECONDS = 1800


class ClusterUnavailable(Exception):
    """Slurm cannot run here; the reason says why."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(root: Path) -> str:
    return "\n".join(
        [
            "ClusterName=yoloforge-test",
            f"SlurmctldHost={NODE}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={root / 'munge.socket'}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            # No cgroups: jobs are plain processes, as in a container.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "GresTypes=gpu",
            f"MinJobAge={MIN_JOB_AGE_SECONDS}",
            "ReturnToService=2",
            # The node is declared like a small GPU node, whatever the hardware reports: memory is
            # not a consumable here, so that only decides which requests fit at all.
            "SlurmdParameters=config_overrides",
            "SchedulerParameters=sched_interval=1",
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=16000 Gres=gpu:1"
            f" Features={FEATURE} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


class SlurmCluster:
    """Start with `start()`; `stop()` ends the daemons this object started, by process id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.processes: dict[str, subprocess.Popen] = {}

    def check_installed(self) -> None:
        if os.geteuid() != 0:
            raise ClusterUnavailable("the Slurm daemons of the test cluster must run as root")
        if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
            raise ClusterUnavailable(f"{DEFAULT_CONF} exists: another Slurm is configured here")
        missing = [
            name for name in (*DAEMONS, "sbatch", "squeue", "scontrol", "sinfo") if not shutil.which(name)
        ]
        if missing:
            raise ClusterUnavailable(
                f"{', '.join(missing)} not installed (apt-get install -y slurm-wlm munge)"
            )

    def start(self) -> None:
        self.check_installed()
        for folder in ("state", "spool", "munge"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.root / "munge").chmod(0o700)
        self.conf.write_text(slurm_conf(self.root))
        # Slurm drops a GPU without a device file; /dev/null stands in for one.
        (self.root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File=/dev/null\n")
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)

        self._spawn(
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={self.root / 'munge.socket'}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--log-file={self.root / 'munge' / 'munged.log'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        )
        self._wait(lambda: (self.root / "munge.socket").exists(), "munged did not open its socket")
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._wait(lambda: self._query("scontrol", "ping").returncode == 0, "slurmctld does not answer")
        self._spawn("slurmd", "-D", "-N", NODE, "-f", str(self.conf))
        self._wait(self._node_idle, "the node did not become idle")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.out", "w")  # noqa: SIM115 (lives as long as the daemon)
        self.processes[name] = subprocess.Popen(
            [name, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _query(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=30)

    def _node_idle(self) -> bool:
        state = self._query("sinfo", "--noheader", "--node", NODE, "--format=%T").stdout.strip()
        return state == "idle"

    def _wait(self, ready, problem: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited with {process.returncode}: {self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise ClusterUnavailable(f"{problem} within {seconds:.0f} s: {self.logs()}")

    def logs(self) -> str:
        texts = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            tail = path.read_text(errors="replace").splitlines()[-15:]
            texts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(texts)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still holds, as `scontrol show job` fields."""
        output = self._query("scontrol", "--oneliner", "show", "job").stdout
        jobs = []
        for line in output.splitlines():
            if not line.strip() or line.startswith("No jobs"):
                continue
            fields = {}
            for item in line.split():
                key, _, value = item.partition("=")
                fields[key] = value
            jobs.append(fields)
        return jobs

    def stop(self) -> None:
        """Cancel what is left, then end each daemon this object started, newest first."""
        if "slurmctld" in self.processes:
            self._query("scancel", "--partition", PARTITION)
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if DEFAULT_CONF.is_symlink() and DEFAULT_CONF.readlink() == self.conf:
            DEFAULT_CONF.unlink()
