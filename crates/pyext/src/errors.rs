//! The exceptions tenantvm raises, and the one conversion of the VMM's errors into them.
//!
//! The classes are made here, once per process, and `tenantvm.errors` re-exports them (as
//! pydantic-core makes `ValidationError` and pydantic re-exports it).  They are real
//! subclasses of the built-in exceptions their meaning matches (`ConfigError` is a
//! `ValueError`, `HostError` an `OSError`), which a `#[pyclass]` cannot be (one base only), so
//! each is created by calling `type(name, bases, namespace)`.
//!
//! ```text
//!   TenantVMError
//!   ├── ConfigError (ValueError)      ├── GuestError
//!   ├── InvalidProgram (ValueError)   │   ├── GuestFault
//!   ├── KvmUnavailable (OSError)      │   ├── GuestTimeout
//!   ├── HostError (OSError)           │   ├── GuestOutOfMemory
//!   ├── RequestTooLarge (ValueError)  │   ├── NoResponse
//!   └── SnapshotFileError (ValueError)│   └── ResponseTooLarge
//! ```
//!
//! [`to_py`] is the only place that decides which class a Rust error becomes and which
//! attributes it carries; the attributes are set on the instance (their defaults live on the
//! class, so an exception made in Python without them still has them).

use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};
use vmm::{Error, Failure, GuestFault};

/// The module the classes say they belong to (where users import them from).
const MODULE: &str = "tenantvm.errors";

/// The exception classes, made once per interpreter.
struct Classes {
    tenantvm_error: Py<PyType>,
    config_error: Py<PyType>,
    invalid_program: Py<PyType>,
    kvm_unavailable: Py<PyType>,
    host_error: Py<PyType>,
    request_too_large: Py<PyType>,
    snapshot_file_error: Py<PyType>,
    guest_error: Py<PyType>,
    guest_fault: Py<PyType>,
    guest_timeout: Py<PyType>,
    guest_out_of_memory: Py<PyType>,
    no_response: Py<PyType>,
    response_too_large: Py<PyType>,
}

/// `type(name, bases, namespace)` with the docstring and the attributes' defaults.
fn class<'py>(
    py: Python<'py>,
    name: &str,
    bases: &[&Bound<'py, PyType>],
    doc: &str,
    defaults: &[(&str, Bound<'py, PyAny>)],
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", MODULE)?;
    namespace.set_item("__doc__", doc)?;
    for (attr, value) in defaults {
        namespace.set_item(attr, value)?;
    }
    let bases = PyTuple::new(py, bases)?;
    Ok(py.get_type::<PyType>().call1((name, bases, namespace))?.cast_into::<PyType>()?.unbind())
}

impl Classes {
    fn get(py: Python<'_>) -> PyResult<&Classes> {
        static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();
        CLASSES.get_or_try_init(py, || Classes::make(py))
    }

    fn make(py: Python<'_>) -> PyResult<Classes> {
        let none = || py.None().into_bound(py);
        let empty = || PyBytes::new(py, b"").into_any();
        let (exception, value_error, os_error) =
            (py.get_type::<PyException>(), py.get_type::<PyValueError>(), py.get_type::<PyOSError>());
        let base = class(py, "TenantVMError", &[&exception], "Base class of every error tenantvm raises.", &[])?;
        let b = base.bind(py);
        let guest = class(
            py,
            "GuestError",
            &[b],
            "The guest program ended in a way that is not a normal exit.\n\n\
             Attributes: stdout, stderr (its output up to then), and for one-shot runs elapsed\n\
             (seconds), syscalls and unsupported_syscalls (by name) and exits; None when unknown.",
            &[
                ("stdout", empty()),
                ("stderr", empty()),
                ("elapsed", none()),
                ("syscalls", none()),
                ("unsupported_syscalls", none()),
                ("exits", none()),
            ],
        )?;
        let g = guest.bind(py);
        Ok(Classes {
            config_error: class(
                py,
                "ConfigError",
                &[b, &value_error],
                "An argument or configuration value is invalid (out of range, wrong type, too large).",
                &[],
            )?,
            invalid_program: class(
                py,
                "InvalidProgram",
                &[b, &value_error],
                "The program file is not something tenantvm can run (not ELF, truncated, not x86-64, \
                 an unreadable dynamic linker...); the message says why.",
                &[],
            )?,
            kvm_unavailable: class(
                py,
                "KvmUnavailable",
                &[b, &os_error],
                "/dev/kvm is missing, cannot be opened, or lacks a capability tenantvm needs.",
                &[],
            )?,
            host_error: class(
                py,
                "HostError",
                &[b, &os_error],
                "A host-side operation failed (a KVM ioctl, mmap, a timer...); errno is set when the \
                 failure came with an OS error number.",
                &[],
            )?,
            request_too_large: class(
                py,
                "RequestTooLarge",
                &[b, &value_error],
                "A request does not fit the tenant's request-size limit; it was not run.\n\n\
                 Attributes: size (its encoded size in bytes), limit.",
                &[("size", none()), ("limit", none())],
            )?,
            snapshot_file_error: class(
                py,
                "SnapshotFileError",
                &[b, &value_error],
                "A snapshot file was refused (or could not be written); nothing ran.\n\n\
                 Attributes: reason (not_a_snapshot, version, truncated, corrupt, host, unsupported,\n\
                 io), path (the file).",
                &[("reason", none()), ("path", none())],
            )?,
            guest_fault: class(
                py,
                "GuestFault",
                &[g],
                "The program caused a CPU exception or passed bad memory to the request API.\n\n\
                 Attributes: kind (page_fault, invalid_opcode, general_protection, divide_error,\n\
                 exception, triple_fault, bad_pointer, vm), address, rip, vector, error_code,\n\
                 access (read/write/execute for page faults), details (every field the VMM reported).",
                &[
                    ("kind", none()),
                    ("address", none()),
                    ("rip", none()),
                    ("vector", none()),
                    ("error_code", none()),
                    ("access", none()),
                    ("details", none()),
                ],
            )?,
            guest_timeout: class(
                py,
                "GuestTimeout",
                &[g],
                "The program did not finish in time, or would never finish (e.g. waits on itself).\n\n\
                 Attributes: timeout (the limit in seconds), deadlock (True when the VMM found that the\n\
                 program could never finish, rather than stopping it at the limit).",
                &[("timeout", none()), ("deadlock", false.into_pyobject(py)?.to_owned().into_any())],
            )?,
            guest_out_of_memory: class(
                py,
                "GuestOutOfMemory",
                &[g],
                "The program ended abnormally after its memory requests were refused.\n\n\
                 Attributes: memory_mb (the VM's memory), exit_code (its exit status if it exited by\n\
                 itself, else None).",
                &[("memory_mb", none()), ("exit_code", none())],
            )?,
            no_response: class(
                py,
                "NoResponse",
                &[g],
                "A request handler stopped without responding (it exited, was killed, or waited again).",
                &[],
            )?,
            response_too_large: class(
                py,
                "ResponseTooLarge",
                &[g],
                "A response exceeded a configured limit.\n\n\
                 Attributes: what (body, headers or header count), size, limit.",
                &[("what", none()), ("size", none()), ("limit", none())],
            )?,
            tenantvm_error: base,
            guest_error: guest,
        })
    }
}

/// Adds the exception classes to the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let c = Classes::get(py)?;
    for ty in [
        &c.tenantvm_error,
        &c.config_error,
        &c.invalid_program,
        &c.kvm_unavailable,
        &c.host_error,
        &c.request_too_large,
        &c.snapshot_file_error,
        &c.guest_error,
        &c.guest_fault,
        &c.guest_timeout,
        &c.guest_out_of_memory,
        &c.no_response,
        &c.response_too_large,
    ] {
        let ty = ty.bind(py);
        m.add(ty.name()?, ty)?;
    }
    Ok(())
}

/// Everything the extension raises.
pub(crate) enum Raised<'a> {
    /// A host-side failure of the VMM.
    Host(&'a Error),
    /// A value Python could not hand over as asked (e.g. a timeout too large for a `Duration`).
    Config(String),
    /// A snapshot file refused or not written.
    SnapshotFile(&'a vmm::SnapshotFileError),
    /// A failed run, boot or call.
    Guest {
        /// The whole message (the failure with the context it happened in).
        message: String,
        /// What failed.
        failure: &'a Failure,
        /// The program's stdout up to then.
        stdout: &'a [u8],
        /// Its stderr.
        stderr: &'a [u8],
    },
}

impl<'a> From<&'a vmm::SnapshotFileError> for Raised<'a> {
    fn from(e: &'a vmm::SnapshotFileError) -> Self {
        match e {
            vmm::SnapshotFileError::Vmm(e) => Raised::Host(e),
            other => Raised::SnapshotFile(other),
        }
    }
}

impl<'a> From<&'a Error> for Raised<'a> {
    fn from(e: &'a Error) -> Self {
        Raised::Host(e)
    }
}

impl<'a> From<&'a vmm::BootError> for Raised<'a> {
    fn from(e: &'a vmm::BootError) -> Self {
        match e {
            vmm::BootError::Host(e) => Raised::Host(e),
            vmm::BootError::Guest { failure, stdout, stderr } => {
                Raised::Guest { message: e.to_string(), failure, stdout, stderr }
            }
        }
    }
}

impl<'a> From<&'a vmm::CallError> for Raised<'a> {
    fn from(e: &'a vmm::CallError) -> Self {
        Raised::Guest { message: e.to_string(), failure: &e.kind, stdout: &e.stdout, stderr: &e.stderr }
    }
}

/// The one conversion of the VMM's errors into Python exceptions (see the module docs).
pub(crate) fn to_py<'a>(py: Python<'_>, raised: impl Into<Raised<'a>>) -> PyErr {
    match build(py, raised.into()) {
        Ok(err) => err,
        Err(failed) => failed,
    }
}

fn build<'py>(py: Python<'py>, raised: Raised<'_>) -> PyResult<PyErr> {
    let c = Classes::get(py)?;
    let new = |ty: &Py<PyType>, args: Bound<'py, PyTuple>| -> PyResult<Bound<'py, PyAny>> { ty.bind(py).call1(args) };
    let exc = match raised {
        Raised::Config(message) => new(&c.config_error, (message,).into_pyobject(py)?)?,
        Raised::SnapshotFile(err) => {
            use vmm::SnapshotFileError as E;
            let (reason, path) = match err {
                E::Io { path, .. } => ("io", Some(path)),
                E::NotASnapshot { path } => ("not_a_snapshot", Some(path)),
                E::Version { path, .. } => ("version", Some(path)),
                E::Truncated { path, .. } => ("truncated", Some(path)),
                E::Corrupt { path, .. } => ("corrupt", Some(path)),
                E::Host { path, .. } => ("host", Some(path)),
                E::Unsupported(_) | E::Vmm(_) => ("unsupported", None),
            };
            let exc = new(&c.snapshot_file_error, (err.to_string(),).into_pyobject(py)?)?;
            exc.setattr("reason", reason)?;
            exc.setattr("path", path.map(|p| p.display().to_string()))?;
            exc
        }
        Raised::Host(err) => {
            let (ty, errno) = match err {
                Error::InvalidProgram(_) => (&c.invalid_program, None),
                Error::Config(_) | Error::DoesNotFit(_) => (&c.config_error, None),
                Error::KvmUnavailable(_) | Error::MissingCapability(_) => (&c.kvm_unavailable, None),
                Error::Os { source, .. } => (&c.host_error, source.raw_os_error()),
                Error::Kvm { source, .. } => (&c.host_error, Some(source.errno())),
                Error::GuestKernel(_) | Error::State(_) => (&c.host_error, None),
            };
            // OS-level failures carry their errno (`HostError(errno, message)`), as OSError does.
            match errno {
                Some(errno) => new(ty, (errno, err.to_string()).into_pyobject(py)?)?,
                None => new(ty, (err.to_string(),).into_pyobject(py)?)?,
            }
        }
        Raised::Guest { message, failure, stdout, stderr } => {
            let set = |exc: &Bound<'py, PyAny>, attrs: &[(&str, Bound<'py, PyAny>)]| -> PyResult<()> {
                attrs.iter().try_for_each(|(k, v)| exc.setattr(*k, v))
            };
            let (ty, attrs): (&Py<PyType>, Vec<(&str, Bound<'py, PyAny>)>) = match failure {
                Failure::RequestTooLarge(t) => (
                    &c.request_too_large,
                    vec![
                        ("size", t.size.into_pyobject(py)?.into_any()),
                        ("limit", t.limit.into_pyobject(py)?.into_any()),
                    ],
                ),
                Failure::Timeout { limit } => {
                    (&c.guest_timeout, vec![("timeout", limit.as_secs_f64().into_pyobject(py)?.into_any())])
                }
                Failure::Deadlock { limit, .. } => (
                    &c.guest_timeout,
                    vec![
                        ("timeout", limit.as_secs_f64().into_pyobject(py)?.into_any()),
                        ("deadlock", true.into_pyobject(py)?.to_owned().into_any()),
                    ],
                ),
                Failure::Fault(GuestFault::ResponseTooLarge { what, size, limit }) => (
                    &c.response_too_large,
                    vec![
                        ("what", what.into_pyobject(py)?.into_any()),
                        ("size", size.into_pyobject(py)?.into_any()),
                        ("limit", limit.into_pyobject(py)?.into_any()),
                    ],
                ),
                Failure::Fault(fault) => {
                    let details = fault_dict(py, fault)?;
                    let mut attrs = vec![("details", details.clone().into_any())];
                    for key in ["kind", "address", "rip", "vector", "error_code", "access"] {
                        if let Some(v) = details.get_item(key)? {
                            attrs.push((key, v));
                        }
                    }
                    (&c.guest_fault, attrs)
                }
                Failure::OutOfMemory { memory, exit_code, .. } => (
                    &c.guest_out_of_memory,
                    vec![
                        ("memory_mb", (memory >> 20).into_pyobject(py)?.into_any()),
                        ("exit_code", exit_code.into_pyobject(py)?.into_any()),
                    ],
                ),
                Failure::NoResponse(_) => (&c.no_response, Vec::new()),
                Failure::Unexpected(_) => (&c.guest_error, Vec::new()),
                Failure::Host(_) => (&c.host_error, Vec::new()),
            };
            let exc = new(ty, (message,).into_pyobject(py)?)?;
            set(&exc, &attrs)?;
            if !matches!(failure, Failure::Host(_) | Failure::RequestTooLarge(_)) {
                set(
                    &exc,
                    &[("stdout", PyBytes::new(py, stdout).into_any()), ("stderr", PyBytes::new(py, stderr).into_any())],
                )?;
            }
            exc
        }
    };
    Ok(PyErr::from_value(exc))
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
