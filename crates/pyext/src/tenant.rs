//! `tenantvm._native.Tenant` and `Instance`: conversions around `vmm::Tenant` and
//! `vmm::Instance`.  The GIL is released while a tenant boots, an instance is created, and a
//! call runs, so several Python threads can drive several instances in parallel.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use vmm::syscalls::api::ApiLimits;
use vmm::{CallErrorKind, Request};

use crate::{config_error, error_class, fault_dict, host_error};

/// A request as Python passes it: (method, path, query, headers, body).
type RawRequest = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

fn request((method, path, query, headers, body): RawRequest) -> Request {
    Request { method, path, query, headers, body }
}

fn seconds(py: Python<'_>, what: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|e| config_error(py, format!("{what} {value:?} s: {e}")))
}

/// Builds a `tenantvm.errors` exception `class(message, **kwargs)` with the call's output.
fn guest_error(py: Python<'_>, class: &str, message: String, kwargs: &Bound<'_, PyDict>) -> PyErr {
    let built = error_class(py, class).and_then(|ty| ty.call((message,), Some(kwargs)));
    match built {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// A booted tenant (`vmm::Tenant`): a snapshot that instances are made from.
#[pyclass(frozen, module = "tenantvm._native", name = "Tenant")]
pub struct Tenant {
    inner: vmm::Tenant,
    memory_mb: u64,
    timeout: f64,
}

#[pymethods]
impl Tenant {
    /// Boots `path` to its first `wait_for_request`, serves the warm-up requests, and
    /// freezes it.  Raises `GuestError` subclasses when the program fails before that.
    #[new]
    #[pyo3(signature = (
        path, args, env, *, memory_mb, timeout, boot_timeout, ephemeral, shared_memory,
        shared_memory_path, max_request, max_response_body, max_response_headers,
        max_response_header_bytes, warmup, output_limit
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        args: Vec<Vec<u8>>,
        env: Vec<Vec<u8>>,
        memory_mb: u64,
        timeout: f64,
        boot_timeout: f64,
        ephemeral: bool,
        shared_memory: u64,
        shared_memory_path: Option<PathBuf>,
        max_request: usize,
        max_response_body: usize,
        max_response_headers: usize,
        max_response_header_bytes: usize,
        warmup: Vec<RawRequest>,
        output_limit: usize,
    ) -> PyResult<Tenant> {
        let mut cfg = vmm::TenantConfig::new(args);
        cfg.env = env;
        cfg.memory = memory_mb
            .checked_mul(1 << 20)
            .ok_or_else(|| config_error(py, format!("memory_mb {memory_mb} is too large")))?;
        cfg.timeout = seconds(py, "timeout", timeout)?;
        cfg.boot_timeout = seconds(py, "boot_timeout", boot_timeout)?;
        cfg.ephemeral = ephemeral;
        cfg.shared_memory = shared_memory;
        cfg.shared_path = shared_memory_path;
        cfg.limits = ApiLimits { max_request, max_response_headers, max_response_header_bytes, max_response_body };
        cfg.warmup = warmup.into_iter().map(request).collect();
        cfg.output_limit = output_limit;
        let booted = py.detach(move || {
            let program = vmm::Program::from_file(path).map_err(vmm::BootError::Host)?;
            vmm::Tenant::boot(&program, cfg)
        });
        match booted {
            Ok(inner) => Ok(Tenant { inner, memory_mb, timeout }),
            Err(vmm::BootError::Host(e)) => Err(host_error(py, e)),
            Err(vmm::BootError::Guest { exit, stdout, stderr }) => {
                let kw = PyDict::new(py);
                kw.set_item("stdout", PyBytes::new(py, &stdout))?;
                kw.set_item("stderr", PyBytes::new(py, &stderr))?;
                let message = format!("the tenant failed before its first wait_for_request: {exit}");
                Err(match exit {
                    vmm::program::ExitKind::Timeout => {
                        kw.set_item("timeout", boot_timeout)?;
                        guest_error(py, "GuestTimeout", message, &kw)
                    }
                    vmm::program::ExitKind::Fault(f) => {
                        for (k, v) in fault_dict(py, &f)?.iter() {
                            kw.set_item(k, v)?;
                        }
                        kw.del_item("message")?;
                        kw.set_item("details", fault_dict(py, &f)?)?;
                        strip_fault_extras(&kw)?;
                        guest_error(py, "GuestFault", message, &kw)
                    }
                    _ => guest_error(py, "NoResponse", message, &kw),
                })
            }
        }
    }

    /// A new instance at the snapshot's state (GIL released while the VM is created).
    fn instance(&self, py: Python<'_>) -> PyResult<Instance> {
        let inner = py.detach(|| self.inner.instance()).map_err(|e| host_error(py, e))?;
        Ok(Instance { inner: Mutex::new(inner), memory_mb: self.memory_mb, timeout: self.timeout })
    }

    /// Seconds it took to boot (and warm up) to the snapshot.
    #[getter]
    fn boot_time(&self) -> f64 {
        self.inner.snapshot().boot_time.as_secs_f64()
    }

    /// Pages of the snapshot that hold data.
    #[getter]
    fn resident_pages(&self) -> u64 {
        self.inner.snapshot().resident_pages
    }

    /// A new instance on a vCPU thread of its own, delivering results to `completions`
    /// (GIL released while the thread creates it).  With `sandbox`, the thread restricts
    /// itself with the seccomp filter first.
    #[pyo3(signature = (completions, sandbox = true))]
    fn worker(&self, py: Python<'_>, completions: &Completions, sandbox: bool) -> PyResult<Worker> {
        let (tenant, queue) = (self.inner.clone(), completions.inner.clone());
        let inner =
            py.detach(move || vmm::worker::Worker::start(tenant, queue, sandbox)).map_err(|e| host_error(py, e))?;
        Ok(Worker { inner })
    }
}

/// Results of calls submitted to workers (`vmm::worker::Completions`): wait until `fileno()`
/// is readable, then `drain()`.
#[pyclass(frozen, module = "tenantvm._native", name = "Completions")]
pub struct Completions {
    inner: Arc<vmm::worker::Completions>,
}

#[pymethods]
impl Completions {
    #[new]
    fn new(py: Python<'_>) -> PyResult<Completions> {
        let inner = vmm::worker::Completions::new().map_err(|e| host_error(py, e))?;
        Ok(Completions { inner: Arc::new(inner) })
    }

    /// The eventfd that is readable while results are waiting.
    fn fileno(&self) -> i32 {
        self.inner.fd()
    }

    /// Every waiting result, as `(token, True, (status, headers, body, stdout, stderr, exits))`
    /// or `(token, False, exception)`.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut out = Vec::new();
        for c in self.inner.drain() {
            let item = match c.result {
                Ok(r) => (c.token, true, result_tuple(py, &r)?.into_any()).into_pyobject(py)?,
                Err(e) => {
                    let memory_mb = c.memory >> 20;
                    let exc = call_error(py, e, c.timeout.as_secs_f64(), memory_mb)?.into_value(py).into_bound(py);
                    (c.token, false, exc.into_any()).into_pyobject(py)?
                }
            };
            out.push(item);
        }
        Ok(out)
    }
}

/// An instance on its own vCPU thread (`vmm::worker::Worker`): calls are submitted without
/// blocking and complete on a `Completions` queue.
#[pyclass(frozen, module = "tenantvm._native", name = "Worker")]
pub struct Worker {
    inner: vmm::worker::Worker,
}

#[pymethods]
impl Worker {
    /// Queues a call; its result comes back from `Completions.drain()` with `token`.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        token: u64,
        method: Vec<u8>,
        path: Vec<u8>,
        query: Vec<u8>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    ) -> PyResult<()> {
        let req = Request { method, path, query, headers, body };
        self.inner.submit(token, req).map_err(|e| host_error(py, e))
    }

    /// False once a host-side failure made the instance unusable.
    #[getter]
    fn usable(&self) -> bool {
        self.inner.usable()
    }

    /// Restores the snapshot (waits for the queued calls first; GIL released).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.reset()).map_err(|e| host_error(py, e))
    }

    /// Counters (see `Instance.stats`; waits for the queued calls first; GIL released).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.inner.stats()).map_err(|e| host_error(py, e))?;
        stats_dict(py, &s)
    }
}

/// GuestFault's constructor takes kind/address/rip/vector/error_code/access; drop the rest.
fn strip_fault_extras(kw: &Bound<'_, PyDict>) -> PyResult<()> {
    for extra in ["call", "len", "what", "size", "limit"] {
        if kw.contains(extra)? {
            kw.del_item(extra)?;
        }
    }
    Ok(())
}

/// One VM serving a tenant (`vmm::Instance`).  Calls on one instance are serialized.
#[pyclass(frozen, module = "tenantvm._native", name = "Instance")]
pub struct Instance {
    inner: Mutex<vmm::Instance>,
    memory_mb: u64,
    timeout: f64,
}

impl Instance {
    fn lock(&self) -> std::sync::MutexGuard<'_, vmm::Instance> {
        // A panic while holding the lock cannot leave the VM half-updated in a way later calls
        // would trust: every call starts by checking the instance's own state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl Instance {
    /// Serves one request; returns `(status, headers, body, stdout, stderr, exits)` or raises
    /// a `tenantvm.errors` exception (the instance is reset and usable afterwards, except
    /// after a `HostError`).
    fn call<'py>(
        &self,
        py: Python<'py>,
        method: Vec<u8>,
        path: Vec<u8>,
        query: Vec<u8>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let req = Request { method, path, query, headers, body };
        let result = py.detach(|| self.lock().call(&req));
        match result {
            Ok(r) => result_tuple(py, &r),
            Err(e) => Err(call_error(py, e, self.timeout, self.memory_mb)?),
        }
    }

    /// Serves `requests` (each `(method, path, query, headers, body)`) in order, with the
    /// memory resets between them done inside the VM (see `vmm::batch`).  Returns one item per
    /// request: the result tuple of [`Instance::call`], or the exception it would have raised
    /// (not raised).  With `budget` (seconds), no request starts after it has passed: the list
    /// is then shorter than `requests` (the rest did not run).
    #[pyo3(signature = (requests, budget=None))]
    fn call_batch<'py>(
        &self,
        py: Python<'py>,
        requests: Vec<BatchedRequest>,
        budget: Option<f64>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let budget = match budget {
            Some(b) if !(b.is_finite() && b >= 0.0) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!("budget must be >= 0 seconds, not {b}")))
            }
            b => b.map(Duration::from_secs_f64),
        };
        let requests: Vec<Request> = requests
            .into_iter()
            .map(|(method, path, query, headers, body)| Request { method, path, query, headers, body })
            .collect();
        let results = py.detach(|| self.lock().call_batch_within(&requests, budget));
        results
            .into_iter()
            .map(|r| match r {
                Ok(r) => Ok(result_tuple(py, &r)?.into_any()),
                Err(e) => Ok(call_error(py, e, self.timeout, self.memory_mb)?.into_value(py).into_bound(py).into_any()),
            })
            .collect()
    }

    /// Restores the snapshot now.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.lock().reset()).map(|_| ()).map_err(|e| host_error(py, e))
    }

    /// False once a host-side failure has made the instance unusable.
    #[getter]
    fn usable(&self) -> bool {
        self.lock().usable()
    }

    /// Counters: calls, errors, entries, exits, last_call_exits, resets, pages_restored,
    /// reset_time (s), last_reset (dict), syscalls (dict number → count), create_time (s).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.lock().stats())
    }
}

/// One request of a batch: `(method, path, query, headers, body)`.
type BatchedRequest = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

/// A successful call as `(status, headers, body, stdout, stderr, exits)`.
fn result_tuple<'py>(py: Python<'py>, r: &vmm::CallResult) -> PyResult<Bound<'py, PyTuple>> {
    let headers: Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> =
        r.response.headers.iter().map(|(k, v)| (PyBytes::new(py, k), PyBytes::new(py, v))).collect();
    PyTuple::new(
        py,
        [
            r.response.status.into_pyobject(py)?.into_any(),
            headers.into_pyobject(py)?.into_any(),
            PyBytes::new(py, &r.response.body).into_any(),
            PyBytes::new(py, &r.stdout).into_any(),
            PyBytes::new(py, &r.stderr).into_any(),
            r.exits.into_pyobject(py)?.into_any(),
        ],
    )
}

/// Instance counters as a dict (see `Instance.stats`).
fn stats_dict<'py>(py: Python<'py>, s: &vmm::InstanceStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("calls", s.calls)?;
    d.set_item("errors", s.errors)?;
    d.set_item("entries", s.entries)?;
    d.set_item("exits", s.exits)?;
    d.set_item("last_call_exits", s.last_call_exits)?;
    d.set_item("resets", s.resets)?;
    d.set_item("pages_restored", s.pages_restored)?;
    d.set_item("reset_time", s.reset_time.as_secs_f64())?;
    let last = PyDict::new(py);
    last.set_item("pages_restored", s.last_reset.pages_restored)?;
    last.set_item("guest_pages", s.last_reset.guest_pages)?;
    last.set_item("kernel_pages", s.last_reset.kernel_pages)?;
    last.set_item("hot_pages", s.last_reset.hot_pages)?;
    last.set_item("duration", s.last_reset.duration.as_secs_f64())?;
    d.set_item("last_reset", last)?;
    d.set_item("syscalls", &s.syscalls.handled)?;
    d.set_item("unsupported_syscalls", &s.syscalls.unsupported)?;
    d.set_item("create_time", s.create_time.as_secs_f64())?;
    d.set_item("batches", s.batches)?;
    d.set_item("guest_resets", s.guest_resets)?;
    d.set_item("guest_pages_restored", s.guest_pages_restored)?;
    d.set_item("starvation_grants", s.starvation_grants)?;
    Ok(d)
}

/// The `tenantvm.errors` exception for a failed call of a tenant with these limits.
fn call_error(py: Python<'_>, e: vmm::CallError, timeout: f64, memory_mb: u64) -> PyResult<PyErr> {
    let kw = PyDict::new(py);
    kw.set_item("stdout", PyBytes::new(py, &e.stdout))?;
    kw.set_item("stderr", PyBytes::new(py, &e.stderr))?;
    Ok(match e.kind {
        CallErrorKind::RequestTooLarge(t) => {
            let kw = PyDict::new(py);
            kw.set_item("size", t.size)?;
            kw.set_item("limit", t.limit)?;
            guest_error(py, "RequestTooLarge", t.to_string(), &kw)
        }
        CallErrorKind::Timeout => {
            kw.set_item("timeout", timeout)?;
            guest_error(py, "GuestTimeout", format!("the request ran past its time limit of {timeout} s"), &kw)
        }
        CallErrorKind::Fault(vmm::GuestFault::ResponseTooLarge { what, size, limit }) => {
            kw.set_item("what", what)?;
            kw.set_item("size", size)?;
            kw.set_item("limit", limit)?;
            let message = vmm::GuestFault::ResponseTooLarge { what, size, limit }.to_string();
            guest_error(py, "ResponseTooLarge", message, &kw)
        }
        CallErrorKind::Fault(f) => {
            let details = fault_dict(py, &f)?;
            for (k, v) in details.iter() {
                kw.set_item(k, v)?;
            }
            kw.del_item("message")?;
            strip_fault_extras(&kw)?;
            kw.set_item("details", details)?;
            guest_error(py, "GuestFault", f.to_string(), &kw)
        }
        CallErrorKind::OutOfMemory(why) => {
            kw.set_item("memory_mb", memory_mb)?;
            guest_error(py, "GuestOutOfMemory", format!("out of memory: {why}"), &kw)
        }
        CallErrorKind::NoResponse(why) => guest_error(py, "NoResponse", format!("no response: {why}"), &kw),
        CallErrorKind::Host(why) => {
            let kw = PyDict::new(py);
            guest_error(py, "HostError", format!("the instance failed on the host and is unusable: {why}"), &kw)
        }
    })
}
