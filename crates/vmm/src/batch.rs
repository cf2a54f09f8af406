//! The host side of batched requests: several requests of an ephemeral tenant served in one
//! `KVM_RUN`, the guest kernel resetting memory between them (see `batch_respond` and
//! `reset_memory` in guest/kernel.c).
//!
//! ```text
//!   host: requests packed into the request area, VC_BATCH filled, VB_ACTIVE = 1
//!   guest: request 0 .. respond -> response copied to the response area, written pages
//!          restored from the restore view (slot 3), registers from KD_SNAP_REGS -> request 1 ..
//!          ... after the last one: one exit (PORT_BATCH_DONE)
//! ```
//!
//! Whatever the guest kernel cannot vouch for goes to the host the ordinary way: a request
//! that made a host system call (the host may have written memory without setting Dirty
//! bits), a bad pointer or oversize response, a fault, a timeout.  The host then finishes that
//! request as [`crate::instance::Instance::call`] would (host reset included) and restarts the
//! batch at the next one.  So the guest kernel's fast path only ever handles requests that
//! touched nothing but their own memory, and memory is always reset one way or the other.
//!
//! This module is the layout of the `VC_BATCH` block and of the response records; the driving
//! loop is `Instance::call_batch`.

use crate::guest::layout::*;
use crate::memory::Mapping;
use crate::syscalls::api::{ApiLimits, Response};

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

    /// Starts a batch of requests at the given guest addresses.
    pub fn start(&self, requests: &[u64], response: (u64, u64), streak: u64, limits: &ApiLimits) {
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
        for (i, va) in requests.iter().enumerate() {
            self.set(VB_REQS + 8 * i as u64, *va);
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
