"""A real single-node SLURM cluster for the tests, from Debian's ``slurm-wlm`` and ``munge``.

:func:`start_cluster` writes its own ``slurm.conf`` (the machine's CPUs and memory as ``slurmd -C``
reports them, ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres``, no accounting, free ports,
state, spool, logs and the job completion log under one temporary folder), starts its own ``munged`` (own key and socket),
``slurmctld -D`` and ``slurmd -D`` as child processes, and waits until ``sinfo`` shows the node idle.
:meth:`SlurmCluster.stop` cancels what is left and ends the three daemons by their pids. Every client
command (``sbatch``, ``scontrol``, submitit's calls) finds the cluster through ``SLURM_CONF`` in
:attr:`SlurmCluster.env`. ``.ci/run`` installs the packages; elsewhere :func:`unavailable` says why the
cluster cannot start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")
REQUIRED_ENV = "ORTHOREG_SLURM_TESTS"  # "required" (.ci/run): a cluster that cannot start fails, never skips


def unavailable() -> str | None:
    """Why no cluster can start here (None: it can)."""
    missing = [tool for tool in (*DAEMONS, *CLIENTS) if shutil.which(tool, path=_sbin_path()) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run does)"
    if os.geteuid() != 0:
        return "slurmd runs jobs as root here (SlurmUser=root): run the tests as root, as .ci/run does"
    return None


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    node: str
    env: dict[str, str]
    cpus: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def job_field(self, job: str, name: str) -> str | None:
        """A field of ``scontrol show job`` (e.g. Restarts, JobState); None once the job is gone."""
        done = self.run("scontrol", "-o", "show", "job", job, check=False)
        match = re.search(rf"\b{name}=(\S*)", done.stdout)
        return match.group(1) if done.returncode == 0 and match else None

    def ran(self) -> str:
        """What ran, from the job completion log (a line per attempt: a requeued attempt ends PENDING)."""
        path = self.root / "jobcomp.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        states = [m.group(1) for line in lines if (m := re.search(r"\bJobState=(\S+)", line))]
        jobs = {m.group(1) for line in lines if (m := re.search(r"\bJobId=(\d+)", line))}
        requeued = sum(state in ("PENDING", "REQUEUED") for state in states)
        ended = ", ".join(
            f"{states.count(s)} {s}" for s in sorted(set(states)) if s not in ("PENDING", "REQUEUED")
        )
        return f"{len(jobs)} jobs, {len(states)} attempts, {requeued} requeued; ended: {ended or 'none'}"

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Cancel every job left, let them end, then stop the daemons by pid (SIGKILL if they linger)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.time() + 30
            while time.time() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _node_line(node: str, env: dict[str, str]) -> tuple[str, int]:
    """``NodeName=...`` as ``slurmd -C`` reports this machine (CPUs, sockets, cores, memory), and its CPUs."""
    done = subprocess.run(["slurmd", "-C"], env=env, capture_output=True, text=True, timeout=60)
    first = done.stdout.splitlines()[0]
    fields = dict(item.split("=", 1) for item in first.split() if "=" in item)
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    line = f"NodeName={node} NodeAddr=127.0.0.1 " + " ".join(f"{k}={fields[k]}" for k in keep if k in fields)
    return line + " State=UNKNOWN", int(fields["CPUs"])


def write_config(root: Path, node: str, env: dict[str, str]) -> tuple[Path, int]:
    munge_socket = root / "munge" / "munge.sock"
    node_line, cpus = _node_line(node, env)
    memory = int(re.search(r"RealMemory=(\d+)", node_line).group(1))
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=orthoreg-test",
                f"SlurmctldHost={node}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                # cred_expire: how long a requeued job waits before it may start again (120 s by default)
                f"AuthInfo=socket={munge_socket},cred_expire=5",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                f"PlugStackConfig={root / 'plugstack.conf'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                f"DefMemPerCPU={max(1, memory // cpus)}",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/filetxt",  # a line per attempt: what the tests ran (no accounting)
                f"JobCompLoc={root / 'jobcomp.txt'}",
                "MpiDefault=none",
                "ReturnToService=2",
                "MinJobAge=10",
                "KillWait=30",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=sched_interval=1,bf_interval=1",
                node_line,
                f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    (root / "plugstack.conf").write_text("")
    return conf, cpus


def start_cluster() -> SlurmCluster:
    """Start munged, slurmctld and slurmd under a new temporary folder; RuntimeError if the node never
    comes up (with the daemons' log tails)."""
    # Under /tmp with 0755: munged wants its socket's folder reachable by all (pytest's folders are 0700).
    root = Path(tempfile.mkdtemp(prefix="orthoreg-slurm-"))
    root.chmod(0o755)
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(mode=0o755)
    node = socket.gethostname().split(".")[0]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    base["PATH"] = _sbin_path()
    conf, cpus = write_config(root, node, base)
    env = {**base, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root=root, node=node, env=env, cpus=cpus)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    commands = {
        "munged": ["munged", "--foreground", f"--socket={root / 'munge' / 'munge.sock'}", f"--key-file={key}",
                   f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}",
                   f"--log-file={root / 'log' / 'munged.log'}"],
        "slurmctld": ["slurmctld", "-D", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-f", str(conf), "-N", node],
    }  # fmt: skip
    try:
        for name, command in commands.items():
            out = open(root / "log" / f"{name}.stdout", "w")  # noqa: SIM115 - the daemon's, closed with it
            cluster.procs[name] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            if name == "munged":
                _wait_for(lambda: (root / "munge" / "munge.sock").exists(), cluster, "munged's socket")
        _wait_for(lambda: _node_state(cluster) == "idle", cluster, f"node {node} idle in sinfo")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_state(cluster: SlurmCluster) -> str:
    done = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _wait_for(condition, cluster: SlurmCluster, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            break
        time.sleep(0.2)
    tails = {n: cluster.log(n)[-1500:] + (cluster.root / "log" / f"{n}.stdout").read_text()[-1500:]
             for n in cluster.procs}  # fmt: skip
    raise RuntimeError(f"SLURM test cluster: no {what} (daemons: {tails})")
