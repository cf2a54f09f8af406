"""Shared helpers of the benchmarks and the soak test.

- statistics over rounds (:class:`Spread`: median and min-max) and per-call percentiles;
- Granian servers on free 127.0.0.1 ports, in their own process group (:class:`Server`);
- ``wrk`` runs with exact percentiles from a Lua reporting script (:func:`run_wrk`);
- process memory and descriptors from ``/proc`` (RSS, ``smaps_rollup``, fd counts);
- the machine's description and whether it is otherwise idle (:func:`machine_info`,
  :func:`wait_until_idle`).

Everything here is bounded in time: servers must become ready within a limit, ``wrk`` runs
for a fixed duration with a subprocess timeout, and stopping a server ends its whole process
group if the graceful stop does not finish.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
APPS_BUILD = Path(os.environ.get("TENANTVM_APPS", REPO / "apps" / "build"))
BASELINE_APPS = BENCH / "apps"
WRK_SCRIPT = BENCH / "wrk_report.lua"
PYTHON = sys.executable
#: Typographic characters of the reports (escaped: ruff flags them as confusable in the source).
TIMES = "\u00d7"
DASH = "\u2013"

#: Environment variables a server must not inherit from the benchmark process.
SCRUBBED_ENV = ("TENANTVM_CONFIG", "TENANTVM_RUN_DIR", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def log(message: str) -> None:
    """Progress output (stderr, so that stdout carries only results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Spread:
    """The median and the range of one figure measured once per round."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (NaN everywhere when there are none)."""
        vals = sorted(v for v in values if v == v)  # drops NaN
        if not vals:
            nan = float("nan")
            return cls(nan, nan, nan, 0)
        return cls(median(vals), vals[0], vals[-1], len(vals))

    def fmt(self, spec: str = ".1f", unit: str = "") -> str:
        """``median (lo-hi)`` with ``spec`` formatting; ``n/a`` without values."""
        if self.n == 0:
            return "n/a"
        if self.n == 1 or self.lo == self.hi:
            return f"{self.median:{spec}}{unit}"
        return f"{self.median:{spec}}{unit} ({self.lo:{spec}}{DASH}{self.hi:{spec}})"

    def as_dict(self) -> dict[str, float]:
        """For results.json."""
        return asdict(self)


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count)."""
    vals = sorted(values)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------------------------
# The machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str:
    """HEAD's commit, with ``+dirty`` when the work tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def tool_version(cmd: Sequence[str]) -> str:
    """The first line a ``--version``-style command prints, or ``unknown``."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, kernel, KVM platform, versions, date and commit: recorded with every result."""
    from tenantvm import _native

    try:
        report = dict(_native.doctor_report())
        kvm = f"{report['platform']} (KVM API {report['api_version']})"
    except Exception as e:  # recorded, not fatal: the sections that need KVM will fail loudly
        kvm = f"unavailable: {e}"
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "kvm": kvm,
        "python": platform.python_version(),
        "granian": tool_version([PYTHON, "-m", "granian", "--version"]),
        "wrk": tool_version(["wrk", "-v"]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "loadavg": os.getloadavg(),
    }


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in _read("/proc/stat").splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy(seconds: float = 1.0) -> float:
    """The fraction of the machine's CPU time that was busy over the next ``seconds``."""
    b0, t0 = _cpu_times()
    time.sleep(seconds)
    b1, t1 = _cpu_times()
    return (b1 - b0) / max(1, t1 - t0)


def wait_until_idle(max_busy: float = 0.2, timeout: float = 120.0) -> dict[str, Any]:
    """Waits (at most ``timeout`` s) until the machine is otherwise idle; says what it found.

    "Idle" is measured, not inferred from the load average (which still shows our own earlier
    load): the fraction of all CPUs busy over 2 s while this process does nothing.
    """
    start = time.monotonic()
    while True:
        busy = cpu_busy(2.0)
        if busy <= max_busy or time.monotonic() - start >= timeout:
            break
        log(f"the machine is busy ({busy:.0%} of all CPUs, load {os.getloadavg()[0]:.2f}); waiting")
        time.sleep(5.0)
    waited = time.monotonic() - start - 2.0  # the last measurement is not waiting
    return {"busy": busy, "idle": busy <= max_busy, "waited_s": round(waited, 1), "loadavg": os.getloadavg()}


# --------------------------------------------------------------------------------------------
# Processes


def proc_children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc, via each process's parent)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        # The command name may contain spaces and parentheses: fields follow its last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size (VmRSS) in KiB; 0 if the process is gone."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int | str = "self") -> int:
    """Open file descriptors; 0 if the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in KiB (Rss, Pss, Private_Dirty, Anonymous, ...)."""
    out: dict[str, int] = {}
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            out[parts[0][:-1]] = int(parts[1])
    return out


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in KiB."""
    out: dict[str, int] = {}
    for line in _read("/proc/meminfo").splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0])
    return out


#: Where KVM's memory for a VM goes, by source: vmalloc callers (``/proc/vmallocinfo``) and
#: slab caches (``/proc/slabinfo``), as seen on Linux 6.x.
KVM_VMALLOC_SOURCES = {
    "memslot_rmap_alloc": "memory slots",
    "kvm_arch_prepare_memory_region": "memory slots",
    "kvm_page_track_create_memslot": "memory slots",
    "kvm_set_memslot": "memory slots",
    "kvm_alloc_dirty_bitmap": "memory slots",
    "fpu_alloc_guest_fpstate": "vCPU",
    "vhost_task_create": "KVM worker thread",
}
KVM_SLAB_SOURCES = {
    "kvm_vcpu": "vCPU",
    "kvm_mmu_page_header": "shadow page tables",
    "debugfs_inode_cache": "debugfs entries",
    "task_struct": "KVM worker thread",
}


def kernel_sources() -> dict[str, int]:
    """KiB of kernel memory by KVM source (empty where /proc/vmallocinfo or slabinfo is unreadable).

    Machine-wide figures: compare two readings of one process to see what it added.
    ``shadow page tables`` adds meminfo's SecPageTables (the page-table pages themselves).
    """
    out: dict[str, int] = {}
    try:
        for line in _read("/proc/vmallocinfo").splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            source = KVM_VMALLOC_SOURCES.get(fields[2].partition("+")[0])
            pages = next((f[6:] for f in fields if f.startswith("pages=")), "")
            if source and pages.isdigit():
                out[source] = out.get(source, 0) + int(pages) * 4
        for line in _read("/proc/slabinfo").splitlines()[2:]:
            fields = line.split()
            source = KVM_SLAB_SOURCES.get(fields[0])
            if source:
                out[source] = out.get(source, 0) + int(fields[2]) * int(fields[3]) // 1024
    except (OSError, ValueError, IndexError):
        return {}
    out["shadow page tables"] = out.get("shadow page tables", 0) + meminfo().get("SecPageTables", 0)
    return out


# --------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def granian_command(target: str, port: int, workers: int, interface: str = "asgi") -> list[str]:
    """The one Granian command line every variant uses (only the application and interface differ)."""
    return [
        PYTHON,
        "-m",
        "granian",
        "--interface",
        interface,
        "--workers",
        str(workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        target,
    ]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without tenantvm's variables, the baseline apps importable."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    paths = [str(BASELINE_APPS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


class ServerFailed(RuntimeError):
    """A server exited early or did not become ready in time."""


def http_get(port: int, path: str = "/", host: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection to 127.0.0.1:``port``: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A Granian server running ``target``: started by :meth:`start`, ended by :meth:`stop`.

    Attributes:
        name: For messages.
        target: The application, ``module:attribute``.
        interface: Granian's interface to it (``asgi`` or ``rsgi``).
        workers: Granian worker processes.
        env: Extra environment (e.g. ``TENANTVM_CONFIG``).
        ready_path: A path that answers 200 once the server serves.
    """

    name: str
    target: str
    workers: int = 1
    interface: str = "asgi"
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    start_time: float = 0.0

    def start(self, timeout: float = 90.0) -> Server:
        """Starts the server and waits until every worker is up and ``ready_path`` answers."""
        self.port = free_port()
        fd, name = tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")
        self.log_path = Path(name)
        t0 = time.perf_counter()
        with os.fdopen(fd, "wb") as out:
            self.proc = subprocess.Popen(
                granian_command(self.target, self.port, self.workers, self.interface),
                cwd=REPO,
                env=server_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so that stop() can end it all
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerFailed(f"{self.name}: exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"{self.name}: not ready within {timeout:.0f} s:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_get(self.port, self.ready_path, timeout=2.0)
                if status == 200 and len(self.worker_pids()) >= self.workers:
                    break
            time.sleep(0.05)
        self.start_time = time.perf_counter() - t0
        return self

    def url(self, path: str = "/") -> str:
        """The URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def pids(self) -> list[int]:
        """The master and every descendant."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *proc_children(self.proc.pid)]

    def worker_pids(self) -> list[int]:
        """The worker processes (descendants of the master)."""
        if self.proc is None:
            return []
        return proc_children(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output."""
        if self.log_path is None:
            return ""
        return "\n".join(_read(str(self.log_path)).splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful: workers close their pools and run directory), then SIGKILL."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: did not stop within {timeout:.0f} s; killing its process group")
        # Whatever is left of the group we created (a worker that outlived its master).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        return proc.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def tenants_file(text: str) -> Iterator[Path]:
    """A temporary tenants file holding ``text`` (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="bench-tenants-") as d:
        path = Path(d) / "tenants.toml"
        path.write_text(text)
        yield path


# --------------------------------------------------------------------------------------------
# wrk


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, exact latency percentiles (µs) and error counters."""

    threads: int
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    max_us: float
    errors: dict[str, int]

    @property
    def error_count(self) -> int:
        """Socket errors, timeouts and non-2xx/3xx responses together."""
        return sum(self.errors.values())


class WrkFailed(RuntimeError):
    """wrk did not run or printed no report."""


def run_wrk(
    url: str,
    *,
    threads: int,
    connections: int,
    seconds: float,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 2.0,
) -> WrkResult:
    """Runs wrk against ``url`` for ``seconds`` and parses its Lua report."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(WRK_SCRIPT),
    ]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired as e:
        raise WrkFailed(f"wrk did not finish: {' '.join(cmd)}") from e
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            break
    else:
        raise WrkFailed(f"no report from wrk (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    lat = data["latency_us"]
    duration = data["duration_us"] / 1e6
    return WrkResult(
        threads=threads,
        connections=connections,
        seconds=duration,
        requests=data["requests"],
        rps=data["requests"] / duration if duration > 0 else 0.0,
        p50_us=float(lat["p50"]),
        p90_us=float(lat["p90"]),
        p99_us=float(lat["p99"]),
        p999_us=float(lat["p999"]),
        mean_us=float(lat["mean"]),
        max_us=float(lat["max"]),
        errors={k: int(v) for k, v in data["errors"].items()},
    )


# --------------------------------------------------------------------------------------------
# Child processes that report JSON


def run_json_child(args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Runs ``python ARGS...`` (a fresh process) and returns the JSON object it prints last."""
    out = subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(args)} printed no result:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
