//! `tenantvm._native.KvBridge`: a Python key-value backend (`tenantvm.kv`) as a
//! [`vmm::kv::KvStore`].
//!
//! The store is called on vCPU threads, which a server restricts with seccomp (no sockets, no
//! file opens) and which run without the GIL.  So the backend never runs there: the bridge
//! starts threads of its own when it is made (from an unrestricted Python thread: threads
//! inherit their creator's filter), a vCPU thread queues the operation for them and waits for
//! the answer at most `timeout` seconds.  A full queue or a late answer is an error the guest
//! sees at once (EIO, ETIMEDOUT), never a hang.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use vmm::kv::{KvError, KvOp, KvReply, KvStore};

/// One queued operation and where its answer goes.
struct Job {
    namespace: Vec<u8>,
    op: KvOp,
    reply: SyncSender<Result<KvReply, KvError>>,
}

/// The Rust side of a bridge: the queue to its threads.
#[derive(Debug)]
struct Bridged {
    jobs: SyncSender<Job>,
    timeout: Duration,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({:?})", self.op)
    }
}

impl KvStore for Bridged {
    fn execute(&self, namespace: &[u8], op: KvOp, deadline: Option<Instant>) -> Result<KvReply, KvError> {
        // Never past the request's time limit: a slow store holds no request longer than that.
        let wait = match deadline {
            Some(d) => self.timeout.min(d.saturating_duration_since(Instant::now())),
            None => self.timeout,
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let job = Job { namespace: namespace.to_vec(), op, reply: tx };
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => KvError::Unavailable("too many operations waiting for the store".into()),
            mpsc::TrySendError::Disconnected(_) => KvError::Unavailable("the store was closed".into()),
        })?;
        match rx.recv_timeout(wait) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(KvError::Timeout(wait)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(KvError::Unavailable("the store's thread ended".into())),
        }
    }
}

/// Runs `op` on the Python backend (`get`/`set`/`incr`/`delete` methods).
fn call_backend(py: Python<'_>, backend: &Py<PyAny>, ns: &[u8], op: KvOp) -> Result<KvReply, KvError> {
    let b = backend.bind(py);
    let ns = PyBytes::new(py, ns);
    let result = match op {
        KvOp::Get { key } => b.call_method1("get", (ns, PyBytes::new(py, &key))).and_then(|v| {
            if v.is_none() {
                Ok(KvReply::Value(None))
            } else {
                Ok(KvReply::Value(Some(v.extract::<Vec<u8>>()?)))
            }
        }),
        KvOp::Set { key, value, ttl_ms } => b
            .call_method1("set", (ns, PyBytes::new(py, &key), PyBytes::new(py, &value), ttl_ms))
            .map(|_| KvReply::Done(true)),
        KvOp::Incr { key, delta } => {
            b.call_method1("incr", (ns, PyBytes::new(py, &key), delta)).and_then(|v| Ok(KvReply::Int(v.extract()?)))
        }
        KvOp::Delete { key } => {
            b.call_method1("delete", (ns, PyBytes::new(py, &key))).and_then(|v| Ok(KvReply::Done(v.is_truthy()?)))
        }
    };
    result.map_err(|e| {
        if e.is_instance_of::<PyOverflowError>(py) {
            KvError::Overflow
        } else if e.is_instance_of::<PyValueError>(py) {
            KvError::NotInteger
        } else {
            KvError::Unavailable(e.to_string())
        }
    })
}

fn serve(backend: Py<PyAny>, jobs: Arc<Mutex<Receiver<Job>>>) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let Job { namespace, op, reply } = job;
        let result = Python::attach(|py| call_backend(py, &backend, &namespace, op));
        // The caller may have given up (timeout): nobody to tell then.
        let _ = reply.send(result);
    }
}

/// A Python key-value backend made usable by tenants' instances (see the module docs).
#[pyclass(frozen, module = "tenantvm._native", name = "KvBridge")]
pub struct KvBridge {
    pub(crate) store: Arc<dyn KvStore>,
}

#[pymethods]
impl KvBridge {
    /// Serves `backend` (an object with `get(ns, key)`, `set(ns, key, value, ttl_ms)`,
    /// `incr(ns, key, delta)`, `delete(ns, key)`; `ValueError`: not an integer,
    /// `OverflowError`: out of range, any other exception: the store is unavailable) on
    /// `threads` threads; a call waits at most `timeout` seconds, and at most `queue` calls wait.
    #[new]
    #[pyo3(signature = (backend, *, timeout, threads = 4, queue = 256))]
    fn new(backend: Py<PyAny>, timeout: f64, threads: usize, queue: usize) -> PyResult<KvBridge> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(PyValueError::new_err(format!("timeout must be > 0 seconds, not {timeout}")));
        }
        if threads == 0 || queue == 0 {
            return Err(PyValueError::new_err("threads and queue must be at least 1"));
        }
        let (tx, rx) = mpsc::sync_channel(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let (backend, rx) = (Python::attach(|py| backend.clone_ref(py)), rx.clone());
            std::thread::Builder::new()
                .name(format!("tenantvm-kv-{i}"))
                .spawn(move || serve(backend, rx))
                .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("starting a KV thread: {e}")))?;
        }
        Ok(KvBridge { store: Arc::new(Bridged { jobs: tx, timeout: Duration::from_secs_f64(timeout) }) })
    }

    /// Runs one operation through the bridge, as a guest's call would (for tests):
    /// `op` is "get", "set", "incr" or "delete".  Returns the value (get: bytes or None),
    /// the new integer (incr), None (set) or a bool (delete); raises `OSError` with the
    /// errno the guest would see.
    #[pyo3(signature = (namespace, op, key, value = Vec::new(), ttl_ms = 0, delta = 0))]
    #[allow(clippy::too_many_arguments)]
    fn execute<'py>(
        &self,
        py: Python<'py>,
        namespace: Vec<u8>,
        op: &str,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u64,
        delta: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let op = match op {
            "get" => KvOp::Get { key },
            "set" => KvOp::Set { key, value, ttl_ms },
            "incr" => KvOp::Incr { key, delta },
            "delete" => KvOp::Delete { key },
            other => return Err(PyValueError::new_err(format!("unknown KV operation {other:?}"))),
        };
        let is_set = matches!(op, KvOp::Set { .. });
        let store = self.store.clone();
        let r = py.detach(move || store.execute(&namespace, op, None));
        match r {
            Ok(KvReply::Done(_)) if is_set => Ok(py.None().into_bound(py)),
            Ok(KvReply::Value(Some(v))) => Ok(PyBytes::new(py, &v).into_any()),
            Ok(KvReply::Value(None)) => Ok(py.None().into_bound(py)),
            Ok(KvReply::Int(n)) => Ok(n.into_pyobject(py)?.into_any()),
            Ok(KvReply::Done(b)) => Ok(pyo3::types::PyBool::new(py, b).to_owned().into_any()),
            Err(e) => {
                // Linux x86-64 errno values: EIO, ETIMEDOUT, EBADMSG, EOVERFLOW.
                let errno = match e {
                    KvError::Unavailable(_) => 5,
                    KvError::Timeout(_) => 110,
                    KvError::NotInteger => 74,
                    KvError::Overflow => 75,
                };
                Err(pyo3::exceptions::PyOSError::new_err((errno, e.to_string())))
            }
        }
    }
}
