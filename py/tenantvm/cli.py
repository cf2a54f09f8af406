"""The ``tenantvm`` command.

::

    tenantvm run [--timeout S] [--memory-mb N] [--env K=V]... PROGRAM [ARGS...]
    tenantvm doctor [--json]
    tenantvm serve [--config FILE] [--host 127.0.0.1] [--port 8080] [--workers N] [--interface rsgi|asgi]
    tenantvm check [FILE]
    tenantvm reload [--server PID] [--timeout S]
    tenantvm snapshot [--config FILE] TENANT OUTPUT
    tenantvm sdk [--path | --cflags | --libs]

``serve`` validates the tenants file (``--config``, else ``$TENANTVM_CONFIG``, else the bundled
examples), then runs the HTTP server (``tenantvm.app:app`` under Granian's RSGI interface, the faster
one; ``--interface asgi`` for ASGI); an
invalid file is reported and the exit status is 2.  ``check`` validates a tenants file and boots
each tenant once: exit status 0 if all boot, 1 if one does not, 2 if the file is invalid.
``reload`` makes a running server re-read its tenants file and swap in the tenants that
changed, without dropping a request (SIGHUP to ``tenantvm serve`` does the same); it waits
for every worker and prints each one's outcome: exit status 0 if all reloaded, 1 if one
refused (the server goes on serving what it served; the reason is printed), 2 if no server
was found or the file is invalid.  ``snapshot`` boots one tenant of a tenants file and writes
it to a snapshot file, which a server (the tenant's ``snapshot`` key) or
``Tenant.from_snapshot`` starts from without booting (exit status 1 if it cannot).  ``sdk``
tells where the installed guest SDK is, to build
tenants against it (exit status 1 if the package was installed without it).

``run`` passes stdin, stdout and stderr through and exits with the program's status (128 +
signal when a signal killed it).  When the program does not exit by itself, a one-line
``tenantvm: ...`` message goes to stderr and the exit status tells what happened:

====  ===============================================================
139   the program faulted (segmentation fault, illegal instruction...)
124   it ran past its time limit, or could never finish
137   it ran out of memory
126   PROGRAM is not something tenantvm can run
127   PROGRAM does not exist
2     invalid command line
1     KVM is unavailable, or another host-side failure
130   interrupted (Ctrl-C)
====  ===============================================================
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import tenantvm
from tenantvm import _native
from tenantvm.errors import (
    ConfigError,
    GuestError,
    GuestFault,
    GuestOutOfMemory,
    GuestTimeout,
    HostError,
    InvalidProgram,
    KvmUnavailable,
)
from tenantvm.runner import MAX_MEMORY_MB, MIN_MEMORY_MB

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from tenantvm.config import TenantsFile

__all__ = ["EXIT_FAULT", "EXIT_INVALID_PROGRAM", "EXIT_NOT_FOUND", "EXIT_OUT_OF_MEMORY", "EXIT_TIMEOUT", "main"]

#: Exit status when the program faulted (like a shell's 128 + SIGSEGV).
EXIT_FAULT = 139
#: Exit status when the program timed out (like coreutils' ``timeout``).
EXIT_TIMEOUT = 124
#: Exit status when the program ran out of memory (like 128 + SIGKILL from the OOM killer).
EXIT_OUT_OF_MEMORY = 137
#: Exit status when the program cannot be run (like a shell's "cannot execute").
EXIT_INVALID_PROGRAM = 126
#: Exit status when the program does not exist (like a shell's "command not found").
EXIT_NOT_FOUND = 127
#: Exit status of a command-line error.
EXIT_USAGE = 2
#: Exit status of a host-side failure.
EXIT_HOST = 1
#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

T = TypeVar("T")

PLATFORMS = {
    "pvm": "PVM (paravirtual KVM, no hardware virtualization)",
    "amd-svm": "hardware KVM (AMD-V/VT-x): AMD-V",
    "intel-vmx": "hardware KVM (AMD-V/VT-x): Intel VT-x",
    "hardware": "hardware KVM (AMD-V/VT-x)",
}


#: `tenantvm serve` drops HTTP/1 clients that take longer than this to send their headers.
HEADER_READ_TIMEOUT_MS = 10_000


def _error(message: str) -> None:
    print(f"tenantvm: {message}", file=sys.stderr, flush=True)


def _load_tenants_file(
    path: Path, overrides: Mapping[str, Mapping[str, Any]] | None = None, refusal: str | None = None
) -> TenantsFile | None:
    """The tenants file at ``path``, or None once its problems (then ``refusal``) are printed."""
    from tenantvm import config as tconfig

    try:
        return tconfig.load(path, overrides)
    except tconfig.TenantsFileError as e:
        for problem in e.problems:
            _error(problem)
        if refusal is not None:
            _error(refusal)
        return None


def _env_entry(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _memory(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not MIN_MEMORY_MB <= value <= MAX_MEMORY_MB:
        raise argparse.ArgumentTypeError(f"must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}: {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535: {text}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256: {text}")
    return value


def _interruptible(func: Callable[[], T]) -> T:
    """Calls ``func`` in a worker thread so that Ctrl-C ends the command at once.

    A running VM cannot be cancelled, and the main thread only sees SIGINT once the native
    call returns (up to the time limit later); instead, the process exits with status 130
    and the kernel reclaims the VM.
    """
    values: list[T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            values.append(func())
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=work, name="tenantvm-run", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    if errors:
        raise errors[0]
    return values[0]


def _mount(value: str) -> tuple[str, str]:
    host, sep, guest = value.rpartition(":")
    if not sep or not host or not guest.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected HOST:GUEST with an absolute GUEST path, got {value!r}")
    return host, guest


def _tmp_mb(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if not 0 <= n <= 32768:
        raise argparse.ArgumentTypeError(f"must be between 0 and 32768, got {n}")
    return n


def _cmd_run(ns: argparse.Namespace) -> int:
    env = dict(ns.env or [])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        result = _interruptible(
            lambda: tenantvm.run(
                ns.program,
                ns.args,
                env,
                stdin=None,
                timeout=ns.timeout,
                memory_mb=ns.memory_mb,
                capture_output=False,
                argv0=ns.argv0,
                allow_read=ns.allow_read or [],
                mounts=dict(ns.mount or []),
                tmp_mb=ns.tmp_mb,
            )
        )
    except GuestFault as e:
        _error(str(e))
        return EXIT_FAULT
    except GuestTimeout as e:
        _error(str(e))
        return EXIT_TIMEOUT
    except GuestOutOfMemory as e:
        _error(str(e))
        return EXIT_OUT_OF_MEMORY
    except GuestError as e:
        _error(str(e))
        return EXIT_HOST
    except FileNotFoundError:
        _error(f"{ns.program}: no such file")
        return EXIT_NOT_FOUND
    except InvalidProgram as e:
        _error(f"{ns.program}: {e}")
        return EXIT_INVALID_PROGRAM
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    except (KvmUnavailable, HostError) as e:
        _error(str(e))
        return EXIT_HOST
    return result.exit_code


def _doctor_data(ns: argparse.Namespace) -> dict[str, Any]:
    report = _native.doctor_report()
    data: dict[str, Any] = {
        "version": tenantvm.__version__,
        "platform": report["platform"],
        "platform_description": PLATFORMS.get(report["platform"], report["platform"]),
        "guest_setup": report["guest_setup"],
        "api_version": report["api_version"],
        "capabilities": dict(report["capabilities"]),
    }
    if ns.measure:
        rt = _native.measure_round_trip(ns.exits, ns.samples)
        data["round_trip"] = {
            "exit_us": rt["exit_us"],
            "vm_lifecycle_us": rt["vm_lifecycle_us"],
            "exits": ns.exits,
            "samples": ns.samples,
        }
    return data


def _print_doctor(data: dict[str, Any]) -> None:
    print(f"tenantvm {data['version']}")
    print(f"platform:      {data['platform_description']}")
    print(f"guest set-up:  {data['guest_setup']}")
    print(f"KVM API:       version {data['api_version']}")
    print("capabilities:")
    width = max((len(name) for name in data["capabilities"]), default=0)
    for name, present in data["capabilities"].items():
        print(f"  {name:<{width}}  {'yes' if present else 'no'}")
    rt = data.get("round_trip")
    if rt is not None:
        print(f"measured (median of {rt['samples']} runs):")
        print(f"  one VM exit round trip:  {rt['exit_us']:.2f} µs")
        print(f"  VM lifecycle:            {rt['vm_lifecycle_us'] / 1000:.2f} ms (create, boot, run, destroy)")


def _cmd_doctor(ns: argparse.Namespace) -> int:
    try:
        data = _doctor_data(ns)
    except KvmUnavailable as e:
        _error(f"{e}\ntenantvm: /dev/kvm is unusable here: tenantvm needs KVM (hardware KVM or PVM)")
        return EXIT_HOST
    except HostError as e:
        _error(str(e))
        return EXIT_HOST
    if ns.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print_doctor(data)
    return 0


def _cmd_serve(ns: argparse.Namespace) -> int:
    from tenantvm import config as tconfig
    from tenantvm import rundir

    cfg = _load_tenants_file(tconfig.config_path(ns.config), refusal="refusing to start: the tenants file is invalid")
    if cfg is None:
        return EXIT_USAGE
    for name, why in cfg.skipped:
        _error(f"tenant '{name}' is left out (optional): {why}")
    os.environ[tconfig.CONFIG_ENV] = str(cfg.path)
    os.environ.pop(rundir.RUN_DIR_ENV, None)
    rundir.clean_stale()
    run = rundir.RunDir.open(rundir.server_dir(os.getpid()))
    try:
        # The workers (forked by Granian) find the run directory and the Prometheus
        # multiprocess directory here; neither tenantvm.app nor prometheus_client is imported
        # in this process.
        os.environ[rundir.RUN_DIR_ENV] = str(run.path)
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(run.metrics))
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
        from granian.constants import Interfaces
        from granian.http import HTTP1Settings
        from granian.log import LogLevels
        from granian.server import Server

        from tenantvm.control import Control

        control = Control(run.path)
        control.create()
        control.set_config(cfg.path)

        class _Server(Server):  # type: ignore[misc,valid-type]
            """Granian's server, except that SIGHUP reloads the tenants.

            Granian's own SIGHUP would restart every worker and boot every tenant again.
            """

            def signal_handler_reload(self, *args: Any, **kwargs: Any) -> None:
                try:
                    generation = control.request_reload()
                except OSError as e:
                    _error(f"SIGHUP: cannot ask the workers to reload: {e}")
                    return
                print(f"tenantvm: SIGHUP: reload {generation} requested", file=sys.stderr, flush=True)

        server = _Server(
            "tenantvm.app:app",
            address=ns.host,
            port=ns.port,
            interface=Interfaces.RSGI if ns.interface == "rsgi" else Interfaces.ASGI,
            workers=ns.workers,
            log_level=LogLevels(ns.log_level),
            log_access=ns.access_log,
            # Slow clients that never finish their headers are dropped after this long.
            http1_settings=HTTP1Settings(header_read_timeout=ns.header_timeout_ms),
        )
        try:
            server.serve()
        except SystemExit as e:  # Granian exits with 1 when a worker fails (e.g. a boot failure)
            return e.code if isinstance(e.code, int) else EXIT_HOST
        return 0
    finally:
        run.close()


def _cmd_check(ns: argparse.Namespace) -> int:
    import time

    from tenantvm import config as tconfig

    cfg = _load_tenants_file(tconfig.config_path(ns.file))
    if cfg is None:
        return EXIT_USAGE
    print(f"{cfg.path}: valid, {len(cfg.tenants)} tenant(s)")
    width = max(len(name) for name in [t.name for t in cfg.tenants] + [name for name, _ in cfg.skipped])
    for name, why in cfg.skipped:
        print(f"  {name:<{width}}  SKIPPED {why} (optional tenant: install what it needs to serve it)")
    failed = 0
    for t in cfg.tenants:
        kwargs = t.tenant_kwargs()  # shared memory stays private: a live server's is not touched
        started = time.perf_counter()
        try:
            tenant = tenantvm.Tenant(kwargs.pop("program"), **kwargs)
            tenant.instance()
        except KvmUnavailable as e:
            _error(f"{e}\ntenantvm: /dev/kvm is unusable here: tenantvm needs KVM (hardware KVM or PVM)")
            return EXIT_HOST
        except (tenantvm.TenantVMError, OSError) as e:
            failed += 1
            print(f"  {t.name:<{width}}  FAILED  {type(e).__name__}: {e}")
            continue
        ms = (time.perf_counter() - started) * 1000
        print(f"  {t.name:<{width}}  ok      booted in {ms:.1f} ms ({t.mode}; hosts: {', '.join(t.hosts)})")
    if failed:
        print(f"{failed} of {len(cfg.tenants)} tenant(s) failed to boot")
    return EXIT_HOST if failed else 0


def _cmd_reload(ns: argparse.Namespace) -> int:
    from tenantvm import rundir
    from tenantvm.control import Control

    servers = rundir.running_servers()
    if ns.server is not None:
        servers = [(pid, d) for pid, d in servers if pid == ns.server]
        if not servers:
            _error(f"no tenantvm server with master process {ns.server} is running")
            return EXIT_USAGE
    servers = [(pid, d) for pid, d in servers if Control(d).exists()]
    if not servers:
        _error("no running tenantvm server found")
        return EXIT_USAGE
    if len(servers) > 1:
        _error("several servers are running; choose one with --server PID: " + ", ".join(str(p) for p, _ in servers))
        return EXIT_USAGE
    pid, directory = servers[0]
    control = Control(directory)
    config = control.config()
    if config is not None:
        # Checked here too, for a quick answer; each worker checks the file again.
        refusal = "reload refused: the tenants file is invalid; the server goes on as it was"
        if _load_tenants_file(config, control.overrides(), refusal) is None:
            return EXIT_USAGE
    generation = control.request_reload()
    statuses = control.wait(generation, ns.timeout)
    if statuses is None:
        _error(f"the workers of server {pid} did not all report reload {generation} within {ns.timeout:g} s")
        return EXIT_HOST
    failed = 0
    for st in statuses:
        outcome = st.outcome
        if outcome is None:
            continue
        print(f"worker {st.pid}: {'ok' if outcome.ok else 'REFUSED'}: {outcome.message} ({outcome.ms:.0f} ms)")
        for problem in outcome.problems:
            print(f"  {problem}")
        failed += not outcome.ok
    return EXIT_HOST if failed else 0


def _cmd_snapshot(ns: argparse.Namespace) -> int:
    import time

    from tenantvm import config as tconfig

    cfg = _load_tenants_file(tconfig.config_path(ns.config))
    if cfg is None:
        return EXIT_USAGE
    try:
        t = cfg.tenant(ns.tenant)
    except KeyError:
        _error(f"no tenant named {ns.tenant!r} in {cfg.path} (tenants: {', '.join(x.name for x in cfg.tenants)})")
        return EXIT_USAGE
    kwargs = t.tenant_kwargs()
    try:
        tenant = tenantvm.Tenant(kwargs.pop("program"), **kwargs)
        started = time.perf_counter()
        tenant.write_snapshot(ns.output)
        written = time.perf_counter() - started
        started = time.perf_counter()
        tenantvm.Tenant.from_snapshot(ns.output).instance()
        ready = time.perf_counter() - started
    except KvmUnavailable as e:
        _error(f"{e}\ntenantvm: /dev/kvm is unusable here: tenantvm needs KVM (hardware KVM or PVM)")
        return EXIT_HOST
    except (tenantvm.TenantVMError, OSError) as e:
        _error(f"{t.name}: {type(e).__name__}: {e}")
        return EXIT_HOST
    size = os.stat(ns.output).st_blocks * 512
    print(
        f"{ns.output}: tenant {t.name}, booted in {tenant.boot_time * 1000:.1f} ms; written in "
        f"{written * 1000:.1f} ms ({size >> 10} KiB on disk); ready from the file in {ready * 1000:.2f} ms"
    )
    return 0


def _cmd_sdk(ns: argparse.Namespace) -> int:
    from tenantvm import bundled

    try:
        sdk = bundled.sdk_dir()
    except bundled.MissingPackageData as e:
        _error(str(e))
        return EXIT_HOST
    if ns.path:
        print(sdk)
    elif ns.cflags:
        print(f"-I{sdk}")
    elif ns.libs:
        print(f"-L{bundled.SDK_LIB_DIR} -ltenantvm")
    else:
        print(f"tenantvm guest SDK: {sdk}")
        print(f"  header:    {bundled.SDK_HEADER}")
        if (sdk / "examples").is_dir():
            print(f"  examples:  {sdk / 'examples'}")
        print(f"  build:     gcc -static -O2 -I{sdk} -o mytenant mytenant.c")
        print(f"  library:   {bundled.SDK_LIB_DIR} (libtenantvm.so/.a, the request API for any FFI)")
        print(f"  programs:  {bundled.EXAMPLES_DIR / 'bin'} (the example tenants, as served by default)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser (one subcommand per verb)."""
    parser = argparse.ArgumentParser(
        prog="tenantvm",
        description="Run untrusted Linux x86-64 programs inside tiny KVM VMs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tenantvm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="run a program in a fresh VM",
        description="Run PROGRAM in a fresh VM with stdin/stdout/stderr passed through; exit with its status.",
        epilog="Exit status: the program's; 139 fault, 124 timeout, 137 out of memory, 126 not runnable, "
        "127 not found, 1 host failure.",
    )
    d = _native.RUN_DEFAULTS
    run.add_argument(
        "--timeout", type=_positive_float, default=d["timeout"], metavar="S", help="time limit (default %(default)g)"
    )
    run.add_argument(
        "--memory-mb", type=_memory, default=d["memory_mb"], metavar="N", help="guest memory, MiB (default %(default)s)"
    )
    run.add_argument(
        "--env", type=_env_entry, action="append", metavar="K=V", help="set an environment variable (repeatable)"
    )
    run.add_argument("--argv0", metavar="NAME", help="argv[0] of the program (default: PROGRAM)")
    run.add_argument("--allow-read", action="append", metavar="PATH", help="let the program read PATH (repeatable)")
    run.add_argument(
        "--mount",
        action="append",
        type=_mount,
        metavar="HOST:GUEST",
        help="let the program read HOST at GUEST (repeatable)",
    )
    run.add_argument(
        "--tmp-mb", type=_tmp_mb, default=d["tmp_mb"], metavar="N", help="its private /tmp, MiB (default %(default)s)"
    )
    run.add_argument("program", metavar="PROGRAM", help="an x86-64 Linux executable (static or dynamic)")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments passed to PROGRAM")
    run.set_defaults(func=_cmd_run)

    doctor = sub.add_parser(
        "doctor",
        help="describe this host's KVM and measure VM costs",
        description="Report the host's KVM platform, capabilities and the cost of a VM exit and of a VM.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--no-measure", dest="measure", action="store_false", help="skip the measurements")
    doctor.add_argument("--exits", type=int, default=2000, help=argparse.SUPPRESS)
    doctor.add_argument("--samples", type=int, default=5, help=argparse.SUPPRESS)
    doctor.set_defaults(func=_cmd_doctor)

    serve = sub.add_parser(
        "serve",
        help="serve the tenants of a tenants file over HTTP",
        description="Validate the tenants file, then serve its tenants over HTTP (Granian, RSGI). "
        "Each worker process boots every tenant before it accepts requests.",
        epilog="Exit status: 2 if the tenants file is invalid, 1 if a tenant fails to boot.",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="the tenants file (default: $TENANTVM_CONFIG, else the bundled examples)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N", help="worker processes (default 1)")
    serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="info",
        help="Granian's log level (default info)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--interface",
        choices=("rsgi", "asgi"),
        default="rsgi",
        help="Granian's interface to the application (default rsgi: less Python per request)",
    )
    serve.add_argument(
        "--header-timeout-ms",
        type=int,
        default=HEADER_READ_TIMEOUT_MS,
        metavar="MS",
        help=f"drop clients that take longer to send their request headers (default {HEADER_READ_TIMEOUT_MS})",
    )
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser(
        "check",
        help="validate a tenants file and boot each tenant once",
        description="Validate a tenants file, then boot each of its tenants once and report how it went.",
        epilog="Exit status: 0 if every tenant boots, 1 if one does not, 2 if the file is invalid.",
    )
    check.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="the tenants file (default: $TENANTVM_CONFIG, else the bundled examples)",
    )
    check.set_defaults(func=_cmd_check)

    reload = sub.add_parser(
        "reload",
        help="make a running server re-read its tenants file",
        description="Make a running server re-read its tenants file: each worker boots the tenants that "
        "changed and swaps them in without dropping a request.  An invalid file or a failing boot "
        "leaves the server as it was.",
        epilog="Exit status: 0 if every worker reloaded, 1 if one refused, 2 if no server or an invalid file.",
    )
    reload.add_argument("--server", type=int, metavar="PID", help="the server's master process (if several run)")
    reload.add_argument(
        "--timeout", type=_positive_float, default=120.0, metavar="S", help="wait this long for the workers"
    )
    reload.set_defaults(func=_cmd_reload)

    snapshot = sub.add_parser(
        "snapshot",
        help="boot a tenant and write it to a snapshot file",
        description="Boot TENANT of a tenants file and write it (memory, registers, emulated process) to OUTPUT, "
        "which servers (the tenant's `snapshot` key) and Tenant.from_snapshot start from without booting.",
        epilog="Exit status: 0 when written, 1 if the tenant cannot be booted or written, 2 for a bad tenants file.",
    )
    snapshot.add_argument(
        "--config", metavar="FILE", help="the tenants file (default: $TENANTVM_CONFIG, else the bundled examples)"
    )
    snapshot.add_argument("tenant", metavar="TENANT", help="the tenant's name")
    snapshot.add_argument("output", metavar="OUTPUT", help="the snapshot file to write")
    snapshot.set_defaults(func=_cmd_snapshot)

    sdk = sub.add_parser(
        "sdk",
        help="where the guest SDK is, to build tenants against it",
        description="Show where the installed guest SDK (tenantvm.h, example sources) is.",
        epilog="Example: gcc -static -O2 $(tenantvm sdk --cflags) -o mytenant mytenant.c",
    )
    sdk_what = sdk.add_mutually_exclusive_group()
    sdk_what.add_argument("--path", action="store_true", help="print the SDK directory (it holds tenantvm.h)")
    sdk_what.add_argument("--cflags", action="store_true", help="print the C compiler flags to use the SDK")
    sdk_what.add_argument("--libs", action="store_true", help="print the linker flags to link libtenantvm")
    sdk.set_defaults(func=_cmd_sdk)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``tenantvm`` command line; returns the exit status."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = ns.func
    try:
        return func(ns)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
