//! `tenantvm._native.Tenant` and `Instance`: conversions around `vmm::Tenant` and
//! `vmm::Instance`.  The GIL is released while a tenant boots, an instance is created, and a
//! call runs, so several Python threads can drive several instances in parallel.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use vmm::{ApiLimits, Request};

use crate::errors::to_py;
use crate::{megabytes, seconds};

/// A request as Python passes it: (method, path, query, headers, body).
type RawRequest = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

fn request((method, path, query, headers, body): RawRequest) -> Request {
    Request { method, path, query, headers, body }
}

/// A booted tenant (`vmm::Tenant`): a snapshot that instances are made from.
#[pyclass(frozen, module = "tenantvm._native", name = "Tenant")]
pub struct Tenant {
    inner: vmm::Tenant,
}

#[pymethods]
impl Tenant {
    /// Boots `path` to its first `wait_for_request`, serves the warm-up requests, and
    /// freezes it.  Raises `GuestError` subclasses when the program fails before that.
    #[new]
    #[pyo3(signature = (
        path, args, env, *, memory_mb, timeout, boot_timeout, ephemeral, shared_memory,
        shared_memory_path, max_request, max_response_body, max_response_headers,
        max_response_header_bytes, warmup, output_limit, allow_read=Vec::new(), mounts=Vec::new(), tmp_mb=16
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
        allow_read: Vec<PathBuf>,
        mounts: Vec<(PathBuf, String)>,
        tmp_mb: u64,
    ) -> PyResult<Tenant> {
        let mut cfg = vmm::TenantConfig::new(args);
        cfg.env = env;
        cfg.memory = megabytes(py, memory_mb)?;
        cfg.timeout = seconds(py, "timeout", timeout)?;
        cfg.boot_timeout = seconds(py, "boot_timeout", boot_timeout)?;
        cfg.ephemeral = ephemeral;
        cfg.shared_memory = shared_memory;
        cfg.shared_path = shared_memory_path;
        cfg.limits = ApiLimits { max_request, max_response_headers, max_response_header_bytes, max_response_body };
        cfg.warmup = warmup.into_iter().map(request).collect();
        cfg.output_limit = output_limit;
        cfg.fs = crate::fs_config(py, allow_read, mounts, tmp_mb)?;
        let booted = py.detach(move || {
            let program = vmm::Program::from_file(path).map_err(vmm::BootError::Host)?;
            vmm::Tenant::boot(&program, cfg)
        });
        booted.map(|inner| Tenant { inner }).map_err(|e| to_py(py, &e))
    }

    /// Starts from the snapshot file at `path` without booting (see
    /// `vmm::tenant::snapshot_file`); `shared_memory_path` replaces the shared-memory file it
    /// was booted with.  Raises `SnapshotFileError` when the file is refused.
    #[staticmethod]
    #[pyo3(signature = (path, shared_memory_path=None))]
    fn from_snapshot_file(py: Python<'_>, path: PathBuf, shared_memory_path: Option<PathBuf>) -> PyResult<Tenant> {
        let loaded = py.detach(|| vmm::Tenant::from_snapshot_file(&path, shared_memory_path));
        loaded.map(|inner| Tenant { inner }).map_err(|e| to_py(py, &e))
    }

    /// Writes the snapshot to the file `path` (atomically: a temporary file renamed).
    fn write_snapshot_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.write_snapshot_file(&path)).map_err(|e| to_py(py, &e))
    }

    /// This tenant with `bridge` as the key-value store of instances made from it from now
    /// on, its keys in `namespace` (the tenant's name in a server), with the given limits.
    #[pyo3(signature = (bridge, namespace, *, max_key = 512, max_value = 65536, max_ops = 64))]
    fn with_kv(
        &self,
        bridge: &crate::kv::KvBridge,
        namespace: Vec<u8>,
        max_key: usize,
        max_value: usize,
        max_ops: u32,
    ) -> Tenant {
        let limits = vmm::kv::KvLimits { max_key, max_value, max_ops_per_request: max_ops };
        let access = vmm::kv::KvAccess { store: bridge.store.clone(), namespace, limits };
        Tenant { inner: self.inner.clone().with_kv(Some(access)) }
    }

    /// A new instance at the snapshot's state (GIL released while the VM is created).
    fn instance(&self, py: Python<'_>) -> PyResult<Instance> {
        let inner = py.detach(|| self.inner.instance()).map_err(|e| to_py(py, &e))?;
        Ok(Instance { inner: Mutex::new(inner) })
    }

    /// Seconds it took to boot (and warm up) to the snapshot.
    #[getter]
    fn boot_time(&self) -> f64 {
        self.inner.snapshot().boot_time().as_secs_f64()
    }

    /// For a tenant started from a snapshot file, each step of loading it as `(name, seconds)`
    /// in order (for benchmarks); empty for a booted one.
    #[getter]
    fn load_steps(&self) -> Vec<(&'static str, f64)> {
        steps_list(self.inner.snapshot().load_steps())
    }

    /// Pages of the snapshot that hold data.
    #[getter]
    fn resident_pages(&self) -> u64 {
        self.inner.snapshot().resident_pages()
    }

    /// Whether instances reset after every request.
    #[getter]
    fn ephemeral(&self) -> bool {
        self.inner.snapshot().config().ephemeral
    }

    /// Time limit of one request (s).
    #[getter]
    fn timeout(&self) -> f64 {
        self.inner.snapshot().config().timeout.as_secs_f64()
    }

    /// Guest memory per instance (MiB).
    #[getter]
    fn memory_mb(&self) -> u64 {
        self.inner.snapshot().config().memory >> 20
    }

    /// A new instance on a vCPU thread of its own, delivering results to `completions`
    /// (GIL released while the thread creates it).  With `sandbox`, the thread restricts
    /// itself with the seccomp filter first.
    #[pyo3(signature = (completions, sandbox = true))]
    fn worker(&self, py: Python<'_>, completions: &Completions, sandbox: bool) -> PyResult<Worker> {
        let (tenant, queue) = (self.inner.clone(), completions.inner.clone());
        let inner = py.detach(move || vmm::worker::Worker::start(tenant, queue, sandbox)).map_err(|e| to_py(py, &e))?;
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
        let inner = vmm::worker::Completions::new().map_err(|e| to_py(py, &e))?;
        Ok(Completions { inner: Arc::new(inner) })
    }

    /// The eventfd that is readable while results are waiting.
    fn fileno(&self) -> i32 {
        self.inner.fd()
    }

    /// Every waiting result, as `(token, True, (status, headers, body, stdout, stderr, exits))`
    /// or `(token, False, exception)` for a call, `(token, True, [tuple or exception, ...])`
    /// for a batch (one item per request served, as `Instance.call_batch` returns).
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut out = Vec::new();
        for c in self.inner.drain() {
            let item = match c.result {
                vmm::worker::Outcome::Call(Ok(r)) => {
                    (c.token, true, result_tuple(py, &r)?.into_any()).into_pyobject(py)?
                }
                vmm::worker::Outcome::Call(Err(e)) => {
                    (c.token, false, to_py(py, &e).into_value(py).into_bound(py).into_any()).into_pyobject(py)?
                }
                vmm::worker::Outcome::Batch(results) => {
                    (c.token, true, batch_list(py, results)?.into_pyobject(py)?.into_any()).into_pyobject(py)?
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
        self.inner.submit(token, req).map_err(|e| to_py(py, &e))
    }

    /// Queues `requests` as one batch (see `Instance.call_batch`, with `budget` in seconds);
    /// its results come back together from `Completions.drain()` with `token`.
    #[pyo3(signature = (token, requests, budget=None))]
    fn submit_batch(&self, py: Python<'_>, token: u64, requests: Vec<RawRequest>, budget: Option<f64>) -> PyResult<()> {
        let budget = batch_budget(budget)?;
        let requests: Vec<Request> = requests.into_iter().map(request).collect();
        self.inner.submit_batch(token, requests, budget).map_err(|e| to_py(py, &e))
    }

    /// Serves `requests` once each and discards the results (see `Instance.prime`; waits for
    /// the queued calls first; GIL released).
    fn prime(&self, py: Python<'_>, requests: Vec<RawRequest>) -> PyResult<()> {
        let requests: Vec<Request> = requests.into_iter().map(request).collect();
        py.detach(|| self.inner.prime(requests)).map_err(|e| to_py(py, &e))
    }

    /// False once a host-side failure made the instance unusable.
    #[getter]
    fn usable(&self) -> bool {
        self.inner.usable()
    }

    /// Restores the snapshot (waits for the queued calls first; GIL released).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.reset()).map_err(|e| to_py(py, &e))
    }

    /// Counters (see `Instance.stats`; waits for the queued calls first; GIL released).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.inner.stats()).map_err(|e| to_py(py, &e))?;
        stats_dict(py, &s)
    }
}

/// One VM serving a tenant (`vmm::Instance`).  Calls on one instance are serialized.
#[pyclass(frozen, module = "tenantvm._native", name = "Instance")]
pub struct Instance {
    inner: Mutex<vmm::Instance>,
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
            Err(e) => Err(to_py(py, &e)),
        }
    }

    /// Serves `requests` (each `(method, path, query, headers, body)`) in order, with the
    /// memory resets between them done inside the VM (see `vmm::Instance::call_batch`).  Returns one item per
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
        let budget = batch_budget(budget)?;
        let requests: Vec<Request> = requests.into_iter().map(request).collect();
        let results = py.detach(|| self.lock().call_batch_within(&requests, budget));
        batch_list(py, results)
    }

    /// Serves `requests` once each, key-value store off, and discards the results, so that
    /// a new ephemeral instance's first real requests do not pay for touching its pages for
    /// the first time (a stateful instance is left as it is).  Raises only a host failure.
    fn prime(&self, py: Python<'_>, requests: Vec<RawRequest>) -> PyResult<()> {
        let requests: Vec<Request> = requests.into_iter().map(request).collect();
        py.detach(|| self.lock().prime(&requests)).map_err(|e| to_py(py, &e))
    }

    /// Restores the snapshot now.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.lock().reset()).map(|_| ()).map_err(|e| to_py(py, &e))
    }

    /// False once a host-side failure has made the instance unusable.
    #[getter]
    fn usable(&self) -> bool {
        self.lock().usable()
    }

    /// Counters, as a dict with the fields of `tenantvm.InstanceStats` (system calls by
    /// number; times in seconds).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.lock().stats())
    }
}

/// One request of a batch: `(method, path, query, headers, body)`.
type BatchedRequest = RawRequest;

/// A batch's budget from Python (seconds, or None for none).
fn batch_budget(budget: Option<f64>) -> PyResult<Option<Duration>> {
    match budget {
        Some(b) if !(b.is_finite() && b >= 0.0) => {
            Err(pyo3::exceptions::PyValueError::new_err(format!("budget must be >= 0 seconds, not {b}")))
        }
        b => Ok(b.map(Duration::from_secs_f64)),
    }
}

/// A batch's results as Python values: the result tuple of a served request, or the
/// exception its call would have raised (not raised).
fn batch_list<'py>(
    py: Python<'py>,
    results: Vec<Result<vmm::CallResult, vmm::CallError>>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    results
        .into_iter()
        .map(|r| match r {
            Ok(r) => Ok(result_tuple(py, &r)?.into_any()),
            Err(e) => Ok(to_py(py, &e).into_value(py).into_bound(py).into_any()),
        })
        .collect()
}

/// Step timings as `(name, seconds)`, in order.
fn steps_list(steps: Option<&vmm::steps::Steps>) -> Vec<(&'static str, f64)> {
    steps.map_or_else(Vec::new, |s| s.as_slice().iter().map(|&(n, d)| (n, d.as_secs_f64())).collect())
}

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

/// Instance counters as a dict with one key per field of `vmm::InstanceStats` (the Python
/// `InstanceStats` has the same fields; `tests/test_tenant.py` checks that they agree).  The
/// destructuring names every field, so a counter added in Rust fails to compile here until it
/// is passed on.
fn stats_dict<'py>(py: Python<'py>, s: &vmm::InstanceStats) -> PyResult<Bound<'py, PyDict>> {
    let vmm::InstanceStats {
        calls,
        errors,
        entries,
        exits,
        last_call_exits,
        resets,
        pages_restored,
        reset_time,
        last_reset,
        syscalls,
        host_syscalls,
        create_time,
        create_steps,
        batches,
        guest_resets,
        guest_pages_restored,
        guest_pages_reprotected,
        starvation_grants,
        host_stalls,
    } = s;
    let d = PyDict::new(py);
    d.set_item("calls", calls)?;
    d.set_item("errors", errors)?;
    d.set_item("entries", entries)?;
    d.set_item("exits", exits)?;
    d.set_item("last_call_exits", last_call_exits)?;
    d.set_item("resets", resets)?;
    d.set_item("pages_restored", pages_restored)?;
    d.set_item("reset_time", reset_time.as_secs_f64())?;
    let last = PyDict::new(py);
    last.set_item("pages_restored", last_reset.pages_restored)?;
    last.set_item("guest_pages", last_reset.guest_pages)?;
    last.set_item("kernel_pages", last_reset.kernel_pages)?;
    last.set_item("hot_pages", last_reset.hot_pages)?;
    last.set_item("duration", last_reset.duration.as_secs_f64())?;
    d.set_item("last_reset", last)?;
    d.set_item("syscalls", &syscalls.handled)?;
    d.set_item("unsupported_syscalls", &syscalls.unsupported)?;
    d.set_item("host_syscalls", host_syscalls)?;
    d.set_item("create_time", create_time.as_secs_f64())?;
    d.set_item("create_steps", steps_list(Some(create_steps)))?;
    d.set_item("batches", batches)?;
    d.set_item("guest_resets", guest_resets)?;
    d.set_item("guest_pages_restored", guest_pages_restored)?;
    d.set_item("guest_pages_reprotected", guest_pages_reprotected)?;
    d.set_item("starvation_grants", starvation_grants)?;
    d.set_item("host_stalls", host_stalls.as_secs_f64())?;
    Ok(d)
}
