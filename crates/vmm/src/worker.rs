//! Instances on threads of their own, for servers with an event loop.
//!
//! A [`Worker`] owns one [`Instance`] on a dedicated thread (its vCPU thread).  Calls are
//! submitted without blocking ([`Worker::submit`]); each result is pushed, with the caller's
//! token, onto a [`Completions`] queue shared by many workers, whose eventfd becomes readable
//! when results are waiting.  An event loop watches that one fd and drains all results per
//! wake-up, so the loop never runs guest code and never waits for it, however long a guest
//! runs, and the exits' cost is paid on another core.
//!
//! The vCPU thread restricts itself with the seccomp filter of [`crate::sandbox`] before it
//! creates its VM, unless told not to: a guest that compromised it would find a thread with
//! nothing but KVM, memory, futexes and its own channels.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::host::EventFd;
use crate::syscalls::api::Request;
use crate::tenant::{CallError, CallResult, Instance, InstanceStats, Tenant};

/// One finished call.
#[derive(Debug)]
pub struct Completion {
    /// The token given to [`Worker::submit`] or [`Worker::submit_batch`].
    pub token: u64,
    /// The outcome.
    pub result: Outcome,
}

/// What a submitted job gave.
#[derive(Debug)]
pub enum Outcome {
    /// A call ([`Worker::submit`]).
    Call(std::result::Result<CallResult, CallError>),
    /// A batch ([`Worker::submit_batch`]): one result per request served, in order; fewer
    /// than the requests when its budget ran out (the rest did not run).
    Batch(Vec<std::result::Result<CallResult, CallError>>),
}

/// Results of calls from any number of workers, with an eventfd to wait on.
///
/// Invariant: whenever the queue is non-empty, the eventfd is readable or `notified` is false
/// and the next push makes it readable.
#[derive(Debug)]
pub struct Completions {
    queue: Mutex<Vec<Completion>>,
    notified: AtomicBool,
    eventfd: EventFd,
}

impl Completions {
    /// A new, empty queue.
    pub fn new() -> Result<Completions> {
        let eventfd = EventFd::new().map_err(|source| Error::Os { op: "eventfd", source })?;
        Ok(Completions { queue: Mutex::new(Vec::new()), notified: AtomicBool::new(false), eventfd })
    }

    /// The eventfd, readable while results are waiting.
    pub fn fd(&self) -> RawFd {
        self.eventfd.fd()
    }

    fn push(&self, c: Completion) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.eventfd.ring();
        }
    }

    /// Takes every waiting result (and makes the eventfd unreadable until the next one).
    pub fn drain(&self) -> Vec<Completion> {
        self.eventfd.clear();
        self.notified.store(false, Ordering::Release);
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

enum Job {
    Call(u64, Request),
    Batch(u64, Vec<Request>, Option<Duration>),
    Prime(Vec<Request>, mpsc::Sender<Result<(), CallError>>),
    Reset(mpsc::Sender<Result<()>>),
    Stats(mpsc::Sender<InstanceStats>),
}

/// What a worker shares with its owner.
#[derive(Debug, Default)]
struct Shared {
    usable: AtomicBool,
}

/// An instance living on its own vCPU thread.
#[derive(Debug)]
pub struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Worker {
    /// Starts a vCPU thread that creates an instance of `tenant` and serves calls, pushing
    /// results to `completions`.  With `sandbox`, the thread restricts itself first.
    /// Returns once the instance exists (or could not be made).
    pub fn start(tenant: Tenant, completions: Arc<Completions>, sandbox: bool) -> Result<Worker> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let shared = Arc::new(Shared::default());
        let mine = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tenantvm-vcpu".into())
            .spawn(move || {
                let made = (|| {
                    if sandbox {
                        crate::sandbox::restrict_current_thread()?;
                    }
                    tenant.instance()
                })();
                let mut instance = match made {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                mine.usable.store(true, Ordering::Release);
                let _ = ready_tx.send(Ok(()));
                serve(&mut instance, &rx, &completions, &mine);
            })
            .map_err(|source| Error::Os { op: "starting a vCPU thread", source })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Worker { jobs: Some(jobs), thread: Some(thread), shared }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::State("the vCPU thread ended before its instance was ready"))
            }
        }
    }

    /// Queues a call; its result arrives on the worker's [`Completions`] with `token`.
    pub fn submit(&self, token: u64, request: Request) -> Result<()> {
        let jobs = self.jobs.as_ref().ok_or(Error::State("the worker is stopped"))?;
        jobs.send(Job::Call(token, request)).map_err(|_| Error::State("the vCPU thread is gone"))
    }

    /// Queues a batch ([`Instance::call_batch_within`]: the guest kernel resets memory between
    /// the requests, one VM entry for those that make no host call); its results arrive
    /// together on the worker's [`Completions`] with `token`, as [`Outcome::Batch`].
    pub fn submit_batch(&self, token: u64, requests: Vec<Request>, budget: Option<Duration>) -> Result<()> {
        let jobs = self.jobs.as_ref().ok_or(Error::State("the worker is stopped"))?;
        jobs.send(Job::Batch(token, requests, budget)).map_err(|_| Error::State("the vCPU thread is gone"))
    }

    /// Primes the instance with `requests` on its vCPU thread (see [`Instance::prime`]; waits
    /// for the calls queued before it).
    pub fn prime(&self, requests: Vec<Request>) -> Result<(), CallError> {
        let gone = || CallError::from(Error::State("the vCPU thread is gone"));
        let jobs = self.jobs.as_ref().ok_or_else(|| CallError::from(Error::State("the worker is stopped")))?;
        let (tx, rx) = mpsc::channel();
        jobs.send(Job::Prime(requests, tx)).map_err(|_| gone())?;
        let primed = rx.recv().map_err(|_| gone())?;
        self.shared.usable.store(primed.is_ok(), Ordering::Release);
        primed
    }

    /// Restores the snapshot (waits for the calls queued before it).
    pub fn reset(&self) -> Result<()> {
        let jobs = self.jobs.as_ref().ok_or(Error::State("the worker is stopped"))?;
        let (tx, rx) = mpsc::channel();
        jobs.send(Job::Reset(tx)).map_err(|_| Error::State("the vCPU thread is gone"))?;
        rx.recv().map_err(|_| Error::State("the vCPU thread is gone"))?
    }

    /// False once a host failure poisoned the instance.
    pub fn usable(&self) -> bool {
        self.shared.usable.load(Ordering::Acquire)
    }

    /// The instance's counters (waits for the calls queued before the question).
    pub fn stats(&self) -> Result<InstanceStats> {
        let jobs = self.jobs.as_ref().ok_or(Error::State("the worker is stopped"))?;
        let (tx, rx) = mpsc::channel();
        jobs.send(Job::Stats(tx)).map_err(|_| Error::State("the vCPU thread is gone"))?;
        rx.recv().map_err(|_| Error::State("the vCPU thread is gone"))
    }
}

fn serve(instance: &mut Instance, rx: &mpsc::Receiver<Job>, completions: &Completions, shared: &Shared) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Call(token, request) => {
                let result = Outcome::Call(instance.call(&request));
                shared.usable.store(instance.usable(), Ordering::Release);
                completions.push(Completion { token, result });
            }
            Job::Batch(token, requests, budget) => {
                let result = Outcome::Batch(instance.call_batch_within(&requests, budget));
                shared.usable.store(instance.usable(), Ordering::Release);
                completions.push(Completion { token, result });
            }
            Job::Prime(requests, reply) => {
                let primed = instance.prime(&requests);
                shared.usable.store(instance.usable(), Ordering::Release);
                let _ = reply.send(primed);
            }
            Job::Reset(reply) => {
                let _ = reply.send(instance.reset().map(|_| ()));
            }
            Job::Stats(reply) => {
                let _ = reply.send(instance.stats());
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its queued calls are done.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
