//! `tenantvm._native`: the Python face of the VMM in `crates/vmm`.
//!
//! Conversions and exception mapping only: every decision about how a run is configured or how
//! its outcome is reported to users lives either in the VMM (`vmm::run`) or in the Python
//! package (`tenantvm.runner`).  This module
//!
//! - turns Python arguments into a [`vmm::RunConfig`],
//! - runs the VM with the GIL released,
//! - turns the [`vmm::RunOutcome`] into a read-only [`RunOutcome`] object, and
//! - raises a host-side [`vmm::Error`] as one of the exception classes defined in Python in
//!   `tenantvm.errors` (`host_error`; `config_error` for values that cannot be handed
//!   over at all).

mod tenant;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyType};
use vmm::error::{Error, GuestFault};
use vmm::program::ExitKind;
use vmm::syscalls::{Input, Output};
use vmm::RunConfig;

/// Where the Python exception classes live.
const ERRORS_MODULE: &str = "tenantvm.errors";

/// Raises `err` as the matching `tenantvm.errors` class.
///
/// OS-level failures carry their errno (`HostError(errno, message)`), like `OSError` does.
pub(crate) fn host_error(py: Python<'_>, err: Error) -> PyErr {
    let (class, errno) = match &err {
        Error::InvalidProgram(_) => ("InvalidProgram", None),
        Error::Config(_) | Error::DoesNotFit(_) => ("ConfigError", None),
        Error::KvmUnavailable(_) | Error::MissingCapability(_) => ("KvmUnavailable", None),
        Error::Os { source, .. } => ("HostError", source.raw_os_error()),
        Error::Kvm { source, .. } => ("HostError", Some(source.errno())),
        Error::GuestKernel(_) | Error::State(_) => ("HostError", None),
    };
    let message = err.to_string();
    match error_class(py, class) {
        Ok(ty) => match errno {
            Some(errno) => PyErr::from_type(ty, (errno, message)),
            None => PyErr::from_type(ty, (message,)),
        },
        Err(import_failed) => import_failed,
    }
}

pub(crate) fn error_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    Ok(py.import(ERRORS_MODULE)?.getattr(name)?.cast_into::<PyType>()?)
}

/// A configuration value Python could not hand over as asked (e.g. a timeout too large for
/// a `Duration`); raised as `tenantvm.errors.ConfigError`.
pub(crate) fn config_error(py: Python<'_>, message: String) -> PyErr {
    match error_class(py, "ConfigError") {
        Ok(ty) => PyErr::from_type(ty, (message,)),
        Err(_) => PyValueError::new_err(message),
    }
}

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
        }
    }
}

/// The fault as a dict: `kind`, `message` (the VMM's text) and the variant's fields.
pub(crate) fn fault_dict<'py>(py: Python<'py>, fault: &GuestFault) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let kind = match fault {
        GuestFault::PageFault { address, rip, error_code, access } => {
            d.set_item("address", address)?;
            d.set_item("rip", rip)?;
            d.set_item("error_code", error_code)?;
            d.set_item("access", access)?;
            "page_fault"
        }
        GuestFault::InvalidOpcode { rip } => {
            d.set_item("rip", rip)?;
            "invalid_opcode"
        }
        GuestFault::GeneralProtection { rip, error_code } => {
            d.set_item("rip", rip)?;
            d.set_item("error_code", error_code)?;
            "general_protection"
        }
        GuestFault::DivideError { rip } => {
            d.set_item("rip", rip)?;
            "divide_error"
        }
        GuestFault::Exception { vector, rip, error_code } => {
            d.set_item("vector", vector)?;
            d.set_item("rip", rip)?;
            d.set_item("error_code", error_code)?;
            "exception"
        }
        GuestFault::TripleFault { rip } => {
            d.set_item("rip", rip)?;
            "triple_fault"
        }
        GuestFault::BadPointer { call, address, len } => {
            d.set_item("call", call)?;
            d.set_item("address", address)?;
            d.set_item("len", len)?;
            "bad_pointer"
        }
        GuestFault::ResponseTooLarge { what, size, limit } => {
            d.set_item("what", what)?;
            d.set_item("size", size)?;
            d.set_item("limit", limit)?;
            "response_too_large"
        }
        GuestFault::Vm(_) => "vm",
    };
    d.set_item("kind", kind)?;
    d.set_item("message", fault.to_string())?;
    Ok(d)
}

#[pymethods]
impl RunOutcome {
    /// None, or a new dict describing the fault.
    #[getter]
    fn fault<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.fault.as_ref().map(|f| fault_dict(py, f)).transpose()
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

/// Runs a static Linux program in a fresh VM.
///
/// `stdin` None inherits the host's stdin; `capture_output` False writes the program's
/// stdout/stderr to the host's.  Host-side failures raise `tenantvm.errors` exceptions; what
/// the program did is in the returned `RunOutcome`.
#[pyfunction]
#[pyo3(signature = (path, args, env, stdin, capture_output, timeout, memory_mb, exe_path))]
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
) -> PyResult<RunOutcome> {
    let timeout =
        Duration::try_from_secs_f64(timeout).map_err(|e| config_error(py, format!("timeout {timeout:?} s: {e}")))?;
    let memory = memory_mb
        .checked_mul(1 << 20)
        .ok_or_else(|| config_error(py, format!("memory_mb {memory_mb} is too large")))?;
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
    let outcome = py.detach(move || vmm::Program::from_file(path).and_then(|program| vmm::run(&program, cfg)));
    match outcome {
        Ok(out) => Ok(RunOutcome::new(py, out)),
        Err(e) => Err(host_error(py, e)),
    }
}

/// Describes the host's KVM: `platform`, `guest_setup`, `api_version`, `capabilities`
/// (a list of `(name, present)`).
#[pyfunction]
fn doctor_report(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let report = py.detach(vmm::doctor::report).map_err(|e| host_error(py, e))?;
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
    let rt = py.detach(move || vmm::doctor::measure(exits, samples)).map_err(|e| host_error(py, e))?;
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
    vmm::sandbox::restrict_current_thread().map_err(|e| host_error(py, e))
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RunOutcome>()?;
    m.add_class::<tenant::Tenant>()?;
    m.add_class::<tenant::Instance>()?;
    m.add_class::<tenant::Completions>()?;
    m.add_class::<tenant::Worker>()?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(doctor_report, m)?)?;
    m.add_function(wrap_pyfunction!(measure_round_trip, m)?)?;
    m.add_function(wrap_pyfunction!(restrict_current_thread, m)?)?;
    Ok(())
}
