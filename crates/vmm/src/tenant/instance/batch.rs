//! The host side of batched requests: several requests of an ephemeral tenant served in one
//! `KVM_RUN`, the guest kernel resetting memory between them (see `batch_respond` and
//! `reset_memory` in guest/kernel.c).
//!
//! ```text
//!   host: requests packed into the staging area (kernel-only), request 0 copied into the
//!         request area, VC_BATCH filled, VB_ACTIVE = 1
//!   guest: request 0 .. respond -> response copied to the response area, written pages
//!          restored from the restore view (slot 3), request 1 copied from the staging area
//!          over request 0 (the rest of request 0 zeroed), registers from KD_SNAP_REGS ->
//!          request 1 ..
//!          ... after the last one: one exit (PORT_BATCH_DONE)
//! ```
//!
//! Whatever the guest kernel cannot vouch for goes to the host the ordinary way: a request
//! that made a host system call (the host may have written memory without setting Dirty
//! bits), a bad pointer or oversize response, a fault, a timeout.  The host then finishes that
//! request as [`Instance::call`] does (with [`Instance::finish`], host reset included) and
//! restarts the batch at the next one.  So the guest kernel's fast path only ever handles requests that
//! touched nothing but their own memory, and memory is always reset one way or the other.
//!
//! The program sees one request at a time: every request is encoded as if at `REQUEST_VA`,
//! and the request area (the only part of the vCPU area the program maps) holds the running
//! one alone.  Packing them side by side in the request area let each request of a batch read
//! the others' headers and bodies (found by the mutation campaign's probe, #16).
//!
//! This module is the layout of the `VC_BATCH` block and of the response records
//! ([`BatchBlock`]), and the loop that drives a batch ([`Instance::call_batch`]).

use std::time::{Duration, Instant};

use super::{CallError, CallResult, Instance, State};
use crate::error::{Failure, GuestFault};
use crate::guest::layout::*;
use crate::host::fill_random;
use crate::machine::RunEnd;
use crate::memory::Mapping;
use crate::syscalls::api::{encode_request_at, ApiLimits, Request, Response};
use crate::syscalls::Stop;
use crate::vm;

/// Most requests in one batch.
pub const MAX_BATCH: usize = VB_MAX as usize;

/// The `VC_BATCH` block of one vCPU area.
pub struct BatchBlock<'a> {
    area: &'a Mapping,
}

impl<'a> BatchBlock<'a> {
    /// The block in `area` (a vCPU area).
    pub fn new(area: &'a Mapping) -> BatchBlock<'a> {
        BatchBlock { area }
    }

    /// Reads a field (`VB_*`).
    pub fn get(&self, field: u64) -> u64 {
        let mut b = [0u8; 8];
        self.area.read(VC_BATCH + field, &mut b).expect("VC_BATCH lies inside every vCPU area");
        u64::from_le_bytes(b)
    }

    /// Writes a field (`VB_*`).
    pub fn set(&self, field: u64, value: u64) {
        self.area.write(VC_BATCH + field, &value.to_le_bytes()).expect("VC_BATCH lies inside every vCPU area");
    }

    /// Starts a batch of requests, each given as (offset in the vCPU area of its staged
    /// bytes, length).
    pub fn start(&self, requests: &[(u64, u64)], response: (u64, u64), streak: u64, limits: &ApiLimits) {
        assert!(requests.len() <= MAX_BATCH);
        self.set(VB_COUNT, requests.len() as u64);
        self.set(VB_NEXT, 0);
        self.set(VB_HOST_TOUCHED, 0);
        self.set(VB_RESP_OFF, response.0);
        self.set(VB_RESP_SIZE, response.1);
        self.set(VB_RESP_USED, 0);
        self.set(VB_STREAK_OFF, streak);
        self.set(VB_MAX_HEADERS, limits.max_response_headers as u64);
        self.set(VB_MAX_HEADER_BYTES, limits.max_response_header_bytes as u64);
        self.set(VB_MAX_BODY, limits.max_response_body as u64);
        for (i, &(offset, len)) in requests.iter().enumerate() {
            assert!(offset < 1 << 32 && len < 1 << 32, "a staged request lies inside the vCPU area");
            self.set(VB_REQS + 8 * i as u64, offset | len << 32);
        }
        self.area
            .fill(VC_BATCH + VB_RESP, MAX_BATCH * VB_RESP_RECORD as usize, 0)
            .expect("VC_BATCH lies inside every vCPU area");
        self.set(VB_ACTIVE, 1);
    }

    /// The response the guest kernel recorded for request `i`, if it answered it.  `None`
    /// when it did not; `Some(Err)` when the record is inconsistent (which only a guest kernel
    /// bug could cause: the program cannot write the vCPU area).
    pub fn response(&self, i: usize) -> Option<Result<Response, String>> {
        let rec = VB_RESP + VB_RESP_RECORD * i as u64;
        if self.get(rec + 40) != 1 {
            return None;
        }
        let (status, table, count, body, body_len) =
            (self.get(rec), self.get(rec + 8), self.get(rec + 16), self.get(rec + 24), self.get(rec + 32));
        let (base, size) = (self.get(VB_RESP_OFF), self.get(VB_RESP_SIZE));
        let bytes = |off: u64, len: u64| -> Result<Vec<u8>, String> {
            let end = off
                .checked_add(len)
                .filter(|&e| e <= size)
                .ok_or_else(|| format!("batch response record {i}: [{off:#x}, +{len:#x}) outside the response area"))?;
            let mut v = vec![0u8; (end - off) as usize];
            self.area.read(base + off, &mut v).ok_or("response area outside the vCPU area")?;
            Ok(v)
        };
        Some((|| {
            let entries = bytes(table, count.checked_mul(32).ok_or("header count overflows")?)?;
            let mut headers = Vec::with_capacity(count as usize);
            for e in entries.chunks_exact(32) {
                let w = |k: usize| u64::from_le_bytes(e[k * 8..k * 8 + 8].try_into().unwrap());
                headers.push((bytes(w(0), w(1))?, bytes(w(2), w(3))?));
            }
            Ok(Response { status, headers, body: bytes(body, body_len)? })
        })())
    }
}

impl Instance {
    /// Serves `requests` in order, as separate calls would (each from the snapshot, each with
    /// its own time limit and result), but with the memory resets done by the guest kernel:
    /// a batch of requests that only compute and respond costs one exit in all.
    ///
    /// Stateful tenants and single requests go through [`Instance::call`] one by one.  At most
    /// [`MAX_BATCH`] requests, and as many as fit the request area together, run per `KVM_RUN`.
    pub fn call_batch(&mut self, requests: &[Request]) -> Vec<Result<CallResult, CallError>> {
        self.call_batch_within(requests, None)
    }

    /// [`Instance::call_batch`] that starts no request once `budget` has passed (for callers
    /// that must not be held up long, like an event loop): returns fewer results than
    /// requests then, one per request served, in order; the rest did not run.  At least one
    /// request is always served.
    pub fn call_batch_within(
        &mut self,
        requests: &[Request],
        budget: Option<Duration>,
    ) -> Vec<Result<CallResult, CallError>> {
        let stop_at = budget.map(|b| Instant::now() + b);
        let mut results = Vec::with_capacity(requests.len());
        let mut rest = requests;
        while let Some(first) = rest.first() {
            if !results.is_empty() && stop_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            let packed = if self.can_batch() { self.pack(rest) } else { Vec::new() };
            if packed.len() < 2 {
                results.push(self.call(first));
                rest = &rest[1..];
                continue;
            }
            let before = results.len();
            self.stats.batches += 1;
            self.run_batch(packed, stop_at, &mut results);
            rest = &rest[results.len() - before..];
        }
        results
    }

    fn can_batch(&mut self) -> bool {
        self.snapshot.config().ephemeral && self.state == State::AtSnapshot
    }

    /// Encodes as many of `requests` as fit the staging area together (up to [`MAX_BATCH`]),
    /// each as it will appear at `REQUEST_VA`, with its offset in the staging area.
    fn pack(&self, requests: &[Request]) -> Vec<(u64, Vec<u8>)> {
        let area = self.snapshot.request_area() as usize;
        let mut packed = Vec::new();
        let mut used = 0usize;
        // Each request's own entropy, drawn from the host with one system call for the lot.
        let mut entropy = [[0u8; 32]; MAX_BATCH];
        fill_random(entropy.as_flattened_mut());
        for (req, entropy) in requests.iter().take(MAX_BATCH).zip(&entropy) {
            let Ok(bytes) = encode_request_at(req, entropy, area - used, REQUEST_VA) else { break };
            let at = used as u64;
            used = (used + bytes.len()).next_multiple_of(8).min(area);
            packed.push((at, bytes));
        }
        packed
    }

    /// Runs packed requests, pushing one result per request onto `results`.
    fn run_batch(
        &mut self,
        packed: Vec<(u64, Vec<u8>)>,
        stop_at: Option<Instant>,
        results: &mut Vec<Result<CallResult, CallError>>,
    ) {
        let n = packed.len();
        let layout = vm::VcpuAreaLayout::new(self.snapshot.request_area(), self.snapshot.ram().size());
        for (at, bytes) in &packed {
            self.machine.vm.vcpu_area.write(layout.staging + at, bytes);
        }
        let area = &self.machine.vm.vcpu_area;
        let staged: Vec<(u64, u64)> = packed.iter().map(|(at, b)| (layout.staging + at, b.len() as u64)).collect();
        let block = BatchBlock::new(area);
        block.start(&staged, (layout.response, layout.response_size), layout.streak, &self.snapshot.config().limits);
        let timeout = self.snapshot.config().timeout;
        let mut check = (timeout / 8).max(Duration::from_millis(1));
        if let Some(t) = stop_at {
            check = check.min(t.saturating_duration_since(Instant::now()).max(Duration::from_micros(200)));
        }
        let mut next = 0;
        while next < n {
            if next > 0 && stop_at.is_some_and(|t| Instant::now() >= t) {
                break; // over the caller's budget: the rest do not run
            }
            // Request `next` starts from the snapshot's registers (the guest kernel starts the
            // ones after it itself).
            let exits_before = self.machine.stats.exits;
            // The guest kernel starts the requests after `next` without telling the host, so
            // the host looks every `CHECK` which one runs: a request's time counts from the
            // first look that saw it running (it may overrun its limit by up to one `CHECK`).
            let mut running = (next as u64, Instant::now());
            let end = self.start_batched(next, &packed).and_then(|()| {
                self.machine.run_until(Some(check), |m| {
                    let block = BatchBlock::new(&m.vm.vcpu_area);
                    let now_running = block.get(VB_NEXT);
                    if now_running != running.0 {
                        running = (now_running, Instant::now());
                    }
                    if stop_at.is_some_and(|t| Instant::now() >= t) {
                        // Over budget: the batch ends after the request that runs (the vCPU
                        // is stopped while this runs, so the guest kernel sees it next time).
                        block.set(VB_COUNT, block.get(VB_COUNT).min(now_running + 1));
                    }
                    running.1 + timeout
                })
            });
            self.stopped_abnormally = !matches!(end, Ok(RunEnd::Stopped(_)));
            let exits = self.machine.stats.exits - exits_before;
            let block = BatchBlock::new(&self.machine.vm.vcpu_area);
            // Requests the guest kernel answered (and reset after).
            let count = (block.get(VB_COUNT) as usize).min(n);
            let stopped_at = (block.get(VB_NEXT) as usize).min(count);
            if stopped_at < next {
                // Cannot happen with a correct guest kernel, which only moves forward; going
                // back would serve requests again, endlessly.
                self.poison(
                    format!("the guest kernel went back in a batch, from request {next} to {stopped_at}"),
                    n - next,
                    results,
                );
                return;
            }
            self.stats.calls += (stopped_at - next) as u64;
            for i in next..stopped_at {
                let result = match block.response(i) {
                    Some(Ok(response)) => Ok(CallResult { response, stdout: Vec::new(), stderr: Vec::new(), exits: 0 }),
                    Some(Err(why)) => Err(Failure::Fault(GuestFault::Vm(why))),
                    None => Err(Failure::Fault(GuestFault::Vm(format!("batched request {i} has no response")))),
                };
                results.push(result.map_err(|kind| {
                    self.stats.errors += 1;
                    CallError { kind, stdout: Vec::new(), stderr: Vec::new() }
                }));
            }
            next = stopped_at;
            match end {
                Ok(RunEnd::Stopped(Stop::BatchDone)) if next == count => {
                    if let Some(Ok(last)) = results.last_mut() {
                        last.exits = exits;
                    }
                    self.stats.last_call_exits = exits;
                }
                Ok(RunEnd::Stopped(Stop::BatchDone)) => {
                    // Cannot happen with a correct guest kernel; never loop on it.
                    self.poison("the guest kernel ended a batch before its last request".into(), n - next, results);
                    return;
                }
                Err(e) => {
                    self.poison(e.to_string(), n - next, results);
                    return;
                }
                Ok(end) => {
                    // The host finishes request `next` exactly as `call` does (reset included).
                    self.stats.calls += 1;
                    let result = self.finish(Ok(end), exits);
                    results.push(result);
                    next += 1;
                    if let State::Poisoned(why) = &self.state {
                        self.poison(why.clone(), n - next, results);
                        return;
                    }
                }
            }
        }
        BatchBlock::new(&self.machine.vm.vcpu_area).set(VB_ACTIVE, 0);
    }

    /// Points the vCPU at the start of batched request `i`, from the snapshot's registers,
    /// with it alone in the request area; the guest kernel copies the ones after it there.
    fn start_batched(&mut self, i: usize, packed: &[(u64, Vec<u8>)]) -> crate::Result<()> {
        let block = BatchBlock::new(&self.machine.vm.vcpu_area);
        block.set(VB_NEXT, i as u64);
        block.set(VB_HOST_TOUCHED, 0);
        block.set(VB_ACTIVE, 1);
        // Requests before `i` made no host call (one would have ended the batch in the guest):
        // request `i` starts with its own budget of KV calls.
        self.machine.kv_ops = 0;
        self.place_request(&packed[i].1);
        // The guest kernel may leave a longer request of the batch there: the next request
        // placed zeroes up to the longest.
        self.request_len = packed[i..].iter().map(|(_, b)| b.len()).max().unwrap_or(0);
        self.start_from_snapshot(REQUEST_VA)
    }

    /// A host failure in a batch: the instance is poisoned and the `left` requests not yet
    /// answered fail with it.
    fn poison(&mut self, why: String, left: usize, results: &mut Vec<Result<CallResult, CallError>>) {
        self.state = State::Poisoned(why.clone());
        self.stats.calls += left as u64;
        self.stats.errors += left as u64;
        for _ in 0..left {
            results.push(Err(CallError { kind: Failure::Host(why.clone()), stdout: Vec::new(), stderr: Vec::new() }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vCPU area with room for the batch block and a response area of `size` bytes at
    /// `RESP_OFF`.
    const RESP_OFF: u64 = 0x10_000;

    fn area(size: u64) -> Mapping {
        Mapping::anonymous((RESP_OFF + size) as usize).unwrap()
    }

    /// Writes record `i` (answered) with `body` placed at `body_off` of the response area.
    fn record(block: &BatchBlock<'_>, i: usize, status: u64, body_off: u64, body_len: u64) {
        let rec = VB_RESP + VB_RESP_RECORD * i as u64;
        for (k, v) in [status, 0, 0, body_off, body_len, 1].into_iter().enumerate() {
            block.set(rec + 8 * k as u64, v);
        }
    }

    #[test]
    fn starting_a_batch_clears_every_record_of_the_one_before() {
        // A record left by an earlier batch must never pass for an answer of this one.
        let area = area(4096);
        let block = BatchBlock::new(&area);
        for i in 0..MAX_BATCH {
            record(&block, i, 200, 0, 0);
        }
        assert!(block.response(MAX_BATCH - 1).is_some());
        block.start(&[(0x8000, 100), (0x8068, 7)], (RESP_OFF, 4096), 0x9000, &ApiLimits::default());
        for i in 0..MAX_BATCH {
            assert!(block.response(i).is_none(), "record {i} of the earlier batch is still there");
        }
        assert_eq!((block.get(VB_ACTIVE), block.get(VB_COUNT), block.get(VB_NEXT)), (1, 2, 0));
        assert_eq!(block.get(VB_REQS + 8), 0x8068 | 7 << 32);
    }

    #[test]
    fn a_response_must_lie_inside_the_response_area() {
        let area = area(4096);
        let block = BatchBlock::new(&area);
        block.start(&[(0x8000, 8)], (RESP_OFF, 4096), 0x9000, &ApiLimits::default());
        area.write(RESP_OFF + 4090, b"abcdef").unwrap();
        // Ends exactly at the end of the area: fine.
        record(&block, 0, 201, 4090, 6);
        let r = block.response(0).unwrap().unwrap();
        assert_eq!((r.status, r.body, r.headers), (201, b"abcdef".to_vec(), vec![]));
        // One byte past it, or a length that wraps: an error, never a read outside.
        record(&block, 1, 200, 4090, 7);
        assert!(block.response(1).unwrap().is_err());
        record(&block, 2, 200, 4090, u64::MAX - 4000);
        assert!(block.response(2).unwrap().is_err());
        // A header table of `count` 32-byte entries is bounded the same way.
        let rec = VB_RESP + VB_RESP_RECORD * 3;
        record(&block, 3, 200, 0, 0);
        block.set(rec + 8, 4096 - 32);
        block.set(rec + 16, 2);
        assert!(block.response(3).unwrap().is_err());
        block.set(rec + 16, u64::MAX / 16);
        assert!(block.response(3).unwrap().is_err());
    }
}
