//! `tenantvm._native`: the Python face of the VMM in `crates/vmm`.
//!
//! Conversions and exceptions only: every decision about how a run is configured or how its
//! outcome is reported to users lives either in the VMM (`vmm::run`) or in the Python package
//! (`tenantvm.runner`).  This module
//!
//! - turns Python arguments into a [`vmm::RunConfig`],
//! - runs the VM with the GIL released,
//! - turns the [`vmm::RunOutcome`] into a read-only [`RunOutcome`] object, whose `error` is the
//!   exception a failed run raises, and
//! - defines the exception classes and converts the VMM's errors into them, in one place
//!   ([`errors`]; `tenantvm.errors` re-exports the classes).
//!
//! [`tenant`] wraps tenants, instances and vCPU-thread workers the same way.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

mod errors;
mod kv;
mod tenant;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use vmm::{ExitKind, Failure, GuestFault, Input, Output, RunConfig};

use crate::errors::{fault_dict, to_py, Raised};

/// How a run ended, as handed to Python (`tenantvm._native.RunOutcome`).
#[pyclass(frozen, module = "tenantvm._native", name = "RunOutcome")]
pub struct RunOutcome {
    /// "exited", "signaled", "fault", "timeout", "deadlock" or "unexpected".
    #[pyo3(get)]
    exit_kind: &'static str,
    /// The exit status for "exited".
    #[pyo3(get)]
    exit_code: Option<i32>,
    /// The signal number for "signaled".
    #[pyo3(get)]
    signal: Option<i32>,
    /// The CPU exception or API misuse for "fault" (a dict on the Python side).
    fault: Option<GuestFault>,
    /// The explanation for "deadlock" and "unexpected".
    #[pyo3(get)]
    message: Option<String>,
    #[pyo3(get)]
    stdout: Py<PyBytes>,
    #[pyo3(get)]
    stderr: Py<PyBytes>,
    #[pyo3(get)]
    output_truncated: bool,
    handled: BTreeMap<u64, u64>,
    unsupported: BTreeMap<u64, u64>,
    /// Seconds.
    #[pyo3(get)]
    elapsed: f64,
    #[pyo3(get)]
    exits: u64,
    #[pyo3(get)]
    memory_exhausted: bool,
    #[pyo3(get)]
    out_of_memory: bool,
    /// Why the run failed, unless the program exited (or killed itself) normally.
    failure: Option<Failure>,
}

impl RunOutcome {
    fn new(py: Python<'_>, out: vmm::RunOutcome) -> RunOutcome {
        let out_of_memory = out.out_of_memory();
        let (exit_kind, exit_code, signal, fault, message) = match out.exit {
            ExitKind::Exited(code) => ("exited", Some(code), None, None, None),
            ExitKind::Signaled(sig) => ("signaled", None, Some(sig), None, None),
            ExitKind::Fault(f) => ("fault", None, None, Some(f), None),
            ExitKind::Timeout => ("timeout", None, None, None, None),
            ExitKind::Deadlock(why) => ("deadlock", None, None, None, Some(why.to_string())),
            ExitKind::Unexpected(why) => ("unexpected", None, None, None, Some(why)),
        };
        RunOutcome {
            exit_kind,
            exit_code,
            signal,
            fault,
            message,
            stdout: PyBytes::new(py, &out.stdout).unbind(),
            stderr: PyBytes::new(py, &out.stderr).unbind(),
            output_truncated: out.output_truncated,
            handled: out.syscalls.handled,
            unsupported: out.syscalls.unsupported,
            elapsed: out.elapsed.as_secs_f64(),
            exits: out.exits,
            memory_exhausted: out.memory_exhausted,
            out_of_memory,
            failure: out.failure,
        }
    }
}

#[pymethods]
impl RunOutcome {
    /// None, or a new dict describing the fault.
    #[getter]
    fn fault<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.fault.as_ref().map(|f| fault_dict(py, f)).transpose()
    }

    /// None when the program exited (or killed itself) normally; else the `GuestError` a
    /// failed run raises, with its output (a new exception on every access, not raised).
    #[getter]
    fn error(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let failure = self.failure.as_ref()?;
        let (stdout, stderr) = (self.stdout.as_bytes(py), self.stderr.as_bytes(py));
        let raised = Raised::Guest { message: failure.to_string(), failure, stdout, stderr };
        Some(to_py(py, raised).into_value(py).into_any())
    }

    /// System calls handled, by number (a new dict).
    #[getter]
    fn syscalls(&self) -> BTreeMap<u64, u64> {
        self.handled.clone()
    }

    /// System calls answered with -ENOSYS because tenantvm does not emulate them, by number.
    #[getter]
    fn unsupported_syscalls(&self) -> BTreeMap<u64, u64> {
        self.unsupported.clone()
    }

    fn __repr__(&self) -> String {
        let how = match (self.exit_kind, self.exit_code, self.signal, &self.fault, &self.message) {
            ("exited", Some(code), ..) => format!("exited {code}"),
            ("signaled", _, Some(sig), ..) => format!("signaled {sig}"),
            (_, _, _, Some(fault), _) => format!("fault: {fault}"),
            (kind, _, _, _, Some(message)) => format!("{kind}: {message}"),
            (kind, ..) => kind.to_string(),
        };
        format!("<RunOutcome {how}, {:.6}s, {} exits>", self.elapsed, self.exits)
    }
}

/// The file-system view of a run or tenant: allowed host paths, remaps, size of /tmp.
pub(crate) fn fs_config(
    py: Python<'_>,
    allow_read: Vec<PathBuf>,
    mounts: Vec<(PathBuf, String)>,
    tmp_mb: u64,
) -> PyResult<vmm::FsConfig> {
    let tmp_bytes = tmp_mb
        .checked_mul(1 << 20)
        .ok_or_else(|| to_py(py, Raised::Config(format!("tmp_mb {tmp_mb} is too large"))))?;
    Ok(vmm::FsConfig { allow_read, mounts, tmp_bytes })
}

/// Runs a Linux program in a fresh VM.
///
/// `stdin` None inherits the host's stdin; `capture_output` False writes the program's
/// stdout/stderr to the host's.  Host-side failures raise `tenantvm.errors` exceptions; what
/// the program did is in the returned `RunOutcome` (`error` when it failed).
#[pyfunction]
#[pyo3(signature = (path, args, env, stdin, capture_output, timeout, memory_mb, exe_path, allow_read=Vec::new(), mounts=Vec::new(), tmp_mb=16))]
#[allow(clippy::too_many_arguments)]
fn run(
    py: Python<'_>,
    path: PathBuf,
    args: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    stdin: Option<Vec<u8>>,
    capture_output: bool,
    timeout: f64,
    memory_mb: u64,
    exe_path: Option<Vec<u8>>,
    allow_read: Vec<PathBuf>,
    mounts: Vec<(PathBuf, String)>,
    tmp_mb: u64,
) -> PyResult<RunOutcome> {
    let timeout = seconds(py, "timeout", timeout)?;
    let memory = megabytes(py, memory_mb)?;
    let mut cfg = RunConfig::new(args);
    cfg.env = env;
    cfg.stdin = match stdin {
        Some(data) => Input::Bytes { data, pos: 0 },
        None => Input::Inherit,
    };
    if !capture_output {
        cfg.stdout = Output::Inherit;
        cfg.stderr = Output::Inherit;
    }
    cfg.timeout = timeout;
    cfg.memory = memory;
    cfg.exe_path = exe_path;
    cfg.fs = fs_config(py, allow_read, mounts, tmp_mb)?;
    let outcome = py.detach(move || vmm::Program::from_file(path).and_then(|program| vmm::run(&program, cfg)));
    match outcome {
        Ok(out) => Ok(RunOutcome::new(py, out)),
        Err(e) => Err(to_py(py, &e)),
    }
}

/// `value` seconds as a `Duration`, or a `ConfigError` naming `what`.
pub(crate) fn seconds(py: Python<'_>, what: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|e| to_py(py, Raised::Config(format!("{what} {value:?} s: {e}"))))
}

/// `memory_mb` MiB in bytes, or a `ConfigError`.
pub(crate) fn megabytes(py: Python<'_>, memory_mb: u64) -> PyResult<u64> {
    memory_mb
        .checked_mul(1 << 20)
        .ok_or_else(|| to_py(py, Raised::Config(format!("memory_mb {memory_mb} is too large"))))
}

/// Describes the host's KVM: `platform`, `guest_setup`, `api_version`, `capabilities`
/// (a list of `(name, present)`).
#[pyfunction]
fn doctor_report(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let report = py.detach(vmm::doctor::report).map_err(|e| to_py(py, &e))?;
    let d = PyDict::new(py);
    d.set_item("platform", report.platform)?;
    d.set_item("guest_setup", report.guest_setup)?;
    d.set_item("api_version", report.api_version)?;
    d.set_item("capabilities", report.capabilities)?;
    Ok(d)
}

/// Measures the median cost of one VM exit round trip (`exit_us`) and of a whole minimal VM
/// lifecycle (`vm_lifecycle_us`), over `samples` runs of `exits` exits each.
#[pyfunction]
#[pyo3(signature = (exits = 2000, samples = 5))]
fn measure_round_trip(py: Python<'_>, exits: u32, samples: usize) -> PyResult<Bound<'_, PyDict>> {
    let rt = py.detach(move || vmm::doctor::measure(exits, samples)).map_err(|e| to_py(py, &e))?;
    let d = PyDict::new(py);
    d.set_item("exit_us", rt.exit.as_secs_f64() * 1e6)?;
    d.set_item("vm_lifecycle_us", rt.vm_lifecycle.as_secs_f64() * 1e6)?;
    Ok(d)
}

/// Restricts the calling thread with the VMM's seccomp filter (see `vmm::sandbox`):
/// afterwards it can drive VMs and do I/O on descriptors it has, but not open files, create
/// sockets or processes (those fail with EPERM).  Irreversible for the thread.
#[pyfunction]
fn restrict_current_thread(py: Python<'_>) -> PyResult<()> {
    vmm::sandbox::restrict_current_thread().map_err(|e| to_py(py, &e))
}

/// The constants Python shares with the VMM, exported from their one source (guest/layout.h
/// and the VMM's defaults) rather than repeated: `API_SYSCALLS` (number → name of the request
/// API's system calls), `MAX_BATCH` (most requests per `call_batch` run), `TENANT_DEFAULTS`
/// (a tenant's configuration when not given) and `RUN_DEFAULTS` (a one-shot run's limits).
fn constants(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("API_SYSCALLS", vmm::API_SYSCALLS.into_iter().collect::<BTreeMap<u64, &str>>())?;
    m.add("MAX_BATCH", vmm::MAX_BATCH)?;
    let cfg = vmm::TenantConfig::new(Vec::new());
    let d = PyDict::new(py);
    d.set_item("memory_mb", cfg.memory >> 20)?;
    d.set_item("timeout", cfg.timeout.as_secs_f64())?;
    d.set_item("boot_timeout", cfg.boot_timeout.as_secs_f64())?;
    d.set_item("ephemeral", cfg.ephemeral)?;
    d.set_item("max_request_bytes", cfg.limits.max_request)?;
    d.set_item("max_response_bytes", cfg.limits.max_response_body)?;
    d.set_item("max_response_headers", cfg.limits.max_response_headers)?;
    d.set_item("max_response_header_bytes", cfg.limits.max_response_header_bytes)?;
    d.set_item("output_limit", cfg.output_limit)?;
    m.add("TENANT_DEFAULTS", d)?;
    let run = vmm::RunConfig::new(Vec::new());
    let d = PyDict::new(py);
    d.set_item("timeout", run.timeout.as_secs_f64())?;
    d.set_item("memory_mb", run.memory >> 20)?;
    d.set_item("tmp_mb", run.fs.tmp_bytes >> 20)?;
    m.add("RUN_DEFAULTS", d)?;
    Ok(())
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    constants(m)?;
    m.add_class::<RunOutcome>()?;
    m.add_class::<tenant::Tenant>()?;
    m.add_class::<kv::KvBridge>()?;
    m.add_class::<tenant::Instance>()?;
    m.add_class::<tenant::Completions>()?;
    m.add_class::<tenant::Worker>()?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(doctor_report, m)?)?;
    m.add_function(wrap_pyfunction!(measure_round_trip, m)?)?;
    m.add_function(wrap_pyfunction!(restrict_current_thread, m)?)?;
    Ok(())
}
