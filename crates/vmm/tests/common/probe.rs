//! Driving the isolation probe (apps/examples/isolate.c): digests, raw system calls.

use vmm::{Instance, Request};

/// An argument the probe replaces by the address of its scratch memory plus the low 16 bits.
pub const SCRATCH: u64 = 0xf00d_0000_0000_0000;

/// A probe request: `POST /` with the given operations and query ("mem": memory and registers
/// only, which the guest kernel can reset in a batch; "": everything).
pub fn digest_request(ops: &[u8], query: &str) -> Request {
    Request {
        method: b"POST".to_vec(),
        path: b"/".to_vec(),
        query: query.as_bytes().to_vec(),
        body: ops.to_vec(),
        ..Default::default()
    }
}

/// One probe operation: kind, offset, data.
pub fn op(kind: u8, offset: u16, data: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&offset.to_le_bytes());
    v.push(data.len() as u8);
    v.extend_from_slice(data);
    v
}

/// A `/syscalls` request making the given raw calls (number, six arguments).  With `probe`
/// the answer says, per call, whether it changed the probe's scratch memory.
pub fn syscalls_request(calls: &[[u64; 7]], probe: bool) -> Request {
    let body = calls.iter().flatten().flat_map(|w| w.to_le_bytes()).collect();
    Request {
        method: b"POST".to_vec(),
        path: b"/syscalls".to_vec(),
        query: if probe { b"probe".to_vec() } else { Vec::new() },
        body,
        ..Default::default()
    }
}

/// The little-endian u64s of a response body.
pub fn words(body: &[u8]) -> Vec<u64> {
    body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// What `Instance::call` answered, as text (or the error, so a comparison shows it).
pub fn answer(inst: &mut Instance, req: &Request) -> String {
    match inst.call(req) {
        Ok(r) => String::from_utf8_lossy(&r.response.body).into_owned(),
        Err(e) => format!("error: {:?}", e.kind),
    }
}

/// [`answer`] to a request that only reads (a digest), asked again when it ran out of time:
/// a digest's time limit is calibrated on the host (see isolation.rs), and a host loaded by
/// others can still stretch one past it (the CI run of 2026-12-03).  A timeout is not what is
/// tested; an answer that differs is, and a digest that never finishes still fails.
pub fn digest_answer(inst: &mut Instance, req: &Request) -> String {
    for _ in 0..2 {
        match inst.call(req) {
            Err(e) if matches!(e.kind, vmm::Failure::Timeout { .. }) => continue,
            Ok(r) => return String::from_utf8_lossy(&r.response.body).into_owned(),
            Err(e) => return format!("error: {:?}", e.kind),
        }
    }
    answer(inst, req)
}

/// The system-call numbers (0..=`max`) the VMM emulates, found by asking it: each number is
/// called once with zero arguments, and the ones it counts as unsupported (-ENOSYS from the
/// dispatcher's default arm) are left out.  New system calls are covered without anyone
/// updating a list.
pub fn emulated_syscalls(inst: &mut Instance, max: u64) -> Vec<u64> {
    let mut found = Vec::new();
    for nr in 0..=max {
        let before = inst.stats().syscalls.unsupported.get(&nr).copied().unwrap_or(0);
        // The call may end the request (exit, a signal to itself): that is fine, the instance
        // resets and the next number goes on.
        let _ = inst.call(&syscalls_request(&[[nr, 0, 0, 0, 0, 0, 0]], false));
        if inst.stats().syscalls.unsupported.get(&nr).copied().unwrap_or(0) == before {
            found.push(nr);
        }
    }
    found
}

/// A small deterministic generator (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Small integer arguments: fds, flags, clock ids, resources, sizes.
pub const SMALL: [u64; 10] = [0, 1, 2, 3, 4, 8, 16, 64, 128, 4096];

/// Argument values that make emulated system calls do their work: small integers (fds,
/// flags, clock ids, resources, sizes) and pointers into the probe's scratch memory.  A
/// pointer stays 32 KiB clear of the end of scratch, sizes are at most 4 KiB, so whatever
/// is written lands in memory the probe digests.
pub fn random_args(rng: &mut Rng) -> [u64; 6] {
    let mut a = [0u64; 6];
    for v in &mut a {
        *v = if rng.below(5) < 2 {
            SCRATCH + rng.below(8) * 4096 + rng.below(4) * 8
        } else {
            SMALL[rng.below(10) as usize]
        };
    }
    a
}
