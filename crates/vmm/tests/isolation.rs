//! Per-request isolation, checked with the isolation probe (apps/examples/isolate.c): whatever
//! a request leaves behind — memory it wrote, memory the host or the guest kernel wrote for
//! it, registers — the next request must not see.  Every expected answer comes from a new
//! instance of the same snapshot, never from an instance that served earlier requests.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::probe::{
    answer, digest_answer, digest_request, emulated_syscalls, op, random_args, syscalls_request, words, Rng, SCRATCH,
    SMALL,
};
use common::{require_kvm, tenant};
use vmm::{Failure, Request, Tenant};

/// Highest system-call number probed (Linux x86-64 ends below 470).
const MAX_NR: u64 = 470;

fn isolate() -> Tenant {
    // Calls that sleep on the probe's arguments should hit the time limit quickly, but a digest
    // must fit in it: on an emulated CPU (the TCG rig) one takes a good part of 100 ms.  So the
    // limit is ten times what a digest takes here, at least 100 ms.
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    let limit = *LIMIT.get_or_init(|| {
        let mut inst = tenant("isolate", |c| c.timeout = Duration::from_secs(10)).instance().unwrap();
        let started = std::time::Instant::now();
        for _ in 0..3 {
            answer(&mut inst, &digest_request(&[], ""));
        }
        (started.elapsed() * 10 / 3).max(Duration::from_millis(100))
    });
    tenant("isolate", |c| c.timeout = limit)
}

/// What a new instance of `t` answers to `req`.
fn fresh(t: &Tenant, req: &Request) -> String {
    digest_answer(&mut t.instance().unwrap(), req)
}

/// Requests of system calls: every emulated number, called first with one pointer into the
/// probe's scratch memory in each argument position and the same small integer in all the
/// others, then with arguments drawn at random from small integers and such pointers (so any
/// output buffer a call has lands in scratch).  Returns the numbers called, and the request.
fn syscall_requests(emulated: &[u64], seed: u64, random_per_number: usize) -> Vec<(Vec<u64>, Request)> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for &nr in emulated {
        let mut calls = Vec::new();
        for p in 0..6 {
            for small in SMALL {
                let mut a = [small; 6];
                a[p] = SCRATCH + 4096 * p as u64;
                calls.push([nr, a[0], a[1], a[2], a[3], a[4], a[5]]);
            }
        }
        calls.extend((0..random_per_number).map(|_| {
            let a = random_args(&mut rng);
            [nr, a[0], a[1], a[2], a[3], a[4], a[5]]
        }));
        for chunk in calls.chunks(40) {
            out.push((vec![nr; chunk.len()], syscalls_request(chunk, true)));
        }
    }
    out
}

/// Requests of 40 random calls each, the numbers drawn from `emulated` too: one call may then
/// work on what another left in scratch (a signal mask, a handler, a time).
fn mixed_syscall_requests(emulated: &[u64], seed: u64, count: usize) -> Vec<(Vec<u64>, Request)> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let calls: Vec<[u64; 7]> = (0..40)
                .map(|_| {
                    let nr = emulated[rng.below(emulated.len() as u64) as usize];
                    let a = random_args(&mut rng);
                    [nr, a[0], a[1], a[2], a[3], a[4], a[5]]
                })
                .collect();
            (calls.iter().map(|c| c[0]).collect(), syscalls_request(&calls, true))
        })
        .collect()
}

/// The numbers of the calls (`nrs`, in order) that changed scratch memory, from `body` (a
/// `/syscalls?probe` answer).
fn scratch_writers(nrs: &[u64], body: &[u8]) -> Vec<u64> {
    words(body).chunks_exact(2).zip(nrs).filter(|(pair, _)| pair[1] == 1).map(|(_, &nr)| nr).collect()
}

/// The system calls of a request, for messages.
fn names(nrs: &[u64]) -> String {
    let mut v = nrs.to_vec();
    v.dedup();
    format!("{v:?}")
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn memory_the_host_writes_for_a_request_is_reset_before_the_next() {
    require_kvm();
    let t = isolate();
    let emulated = emulated_syscalls(&mut t.instance().unwrap(), MAX_NR);
    assert!(emulated.len() >= 50, "the VMM emulates more than {emulated:?}");
    let clean = fresh(&t, &digest_request(&[], ""));
    let mut inst = t.instance().unwrap();
    let mut writers = BTreeSet::new();
    let mut requests = syscall_requests(&emulated, 0x5eed_0001, 160);
    requests.extend(mixed_syscall_requests(&emulated, 0x5eed_0003, 100));
    for (nrs, req) in requests {
        if let Ok(r) = inst.call(&req) {
            writers.extend(scratch_writers(&nrs, &r.response.body));
        }
        // Memory, registers, descriptors, break, allocator, signal mask: all as at the snapshot.
        assert_eq!(
            digest_answer(&mut inst, &digest_request(&[], "")),
            clean,
            "after a request of system calls {}",
            names(&nrs)
        );
    }
    eprintln!("system calls that wrote the probe's memory: {writers:?}");
    // The sweep must have made the host write guest memory, or it proves nothing.  These are
    // host-served calls whose output is not all zero bytes (uname, fstat, getcwd, getrlimit,
    // prlimit64, clock_getres): if one is missing, the arguments no longer reach its output.
    for nr in [63, 5, 79, 97, 302, 229] {
        assert!(writers.contains(&nr), "system call {nr} never wrote the probe's memory: {writers:?}");
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn memory_the_host_writes_for_a_batched_request_is_reset_before_the_next() {
    require_kvm();
    let t = isolate();
    let emulated = emulated_syscalls(&mut t.instance().unwrap(), MAX_NR);
    let clean_mem = fresh(&t, &digest_request(&[], "mem"));
    let clean = fresh(&t, &digest_request(&[], ""));
    let mut inst = t.instance().unwrap();
    // Each syscall request followed by a memory-only digest, which the guest kernel serves and
    // resets by itself when it can: the host must have reset the pages it wrote.
    let requests = syscall_requests(&emulated, 0x5eed_0002, 40);
    for group in requests.chunks(8) {
        let mut batch = Vec::new();
        for (_, req) in group {
            batch.push(req.clone());
            batch.push(digest_request(&[], "mem"));
            batch.push(digest_request(&[], ""));
        }
        let got = inst.call_batch(&batch);
        for (i, (nrs, _)) in group.iter().enumerate() {
            // A batched digest that ran out of time (a loaded host) is asked again alone.
            let mut text = |k: usize| match &got[3 * i + k] {
                Ok(r) => String::from_utf8_lossy(&r.response.body).into_owned(),
                Err(e) if matches!(e.kind, Failure::Timeout { .. }) => digest_answer(&mut inst, &batch[3 * i + k]),
                Err(e) => format!("error: {:?}", e.kind),
            };
            let nr = names(nrs);
            assert_eq!(text(1), clean_mem, "memory digest after a batched request of system calls {nr}");
            assert_eq!(text(2), clean, "full digest after a batched request of system calls {nr}");
        }
    }
    assert!(inst.stats().batches > 0);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn known_output_buffers_are_reset() {
    // The same property for a few calls with known arguments, each on its own page of
    // scratch memory: a failure names the call.
    require_kvm();
    let t = isolate();
    let clean = fresh(&t, &digest_request(&[], ""));
    let page = |i: u64| SCRATCH + i * 4096;
    let cases: &[(&str, [u64; 7])] = &[
        ("uname", [63, page(0), 0, 0, 0, 0, 0]),
        ("fstat(1)", [5, 1, page(1), 0, 0, 0, 0]),
        ("read(0)", [0, 0, page(2), 64, 0, 0, 0]),
        ("sched_getaffinity", [204, 0, 128, page(3), 0, 0, 0]),
        ("prlimit64(RLIMIT_STACK)", [302, 0, 3, 0, page(4), 0, 0]),
        ("clock_gettime(CLOCK_PROCESS_CPUTIME_ID)", [228, 2, page(5), 0, 0, 0, 0]),
        ("clock_gettime(CLOCK_REALTIME)", [228, 0, page(6), 0, 0, 0, 0]),
        ("getrandom(256)", [318, page(7), 256, 0, 0, 0, 0]),
        ("getrandom(4096)", [318, page(8), 4096, 0, 0, 0, 0]),
        ("getcwd", [79, page(10), 64, 0, 0, 0, 0]),
    ];
    let mut inst = t.instance().unwrap();
    for (name, call) in cases {
        let calls = [*call];
        let r = inst.call(&syscalls_request(&calls, true)).unwrap_or_else(|e| panic!("{name}: {:?}", e.kind));
        let w = words(&r.response.body);
        let (ret, changed) = (w[w.len() - 2] as i64, w[w.len() - 1]);
        if *name != "read(0)" {
            assert!(ret >= 0 && changed == 1, "{name}: returned {ret}, changed scratch: {changed}");
        }
        assert_eq!(digest_answer(&mut inst, &digest_request(&[], "")), clean, "after {name}");
        // And inside a batch, followed by a request the guest kernel resets.
        let got =
            inst.call_batch(&[syscalls_request(&calls, true), digest_request(&[], "mem"), digest_request(&[], "")]);
        let texts: Vec<String> = got
            .iter()
            .map(|r| r.as_ref().map(|r| String::from_utf8_lossy(&r.response.body).into_owned()).unwrap_or_default())
            .collect();
        assert_eq!(texts[1], fresh(&t, &digest_request(&[], "mem")), "batched, after {name}");
        assert_eq!(texts[2], clean, "batched, after {name}");
    }
}

/// Probe operations that leave vector-register state behind (see isolate.c).
const VECTOR_KINDS: [(u8, &str); 7] = [
    (7, "xmm0-15"),
    (8, "MXCSR"),
    (9, "x87 control word"),
    (14, "ymm0 upper half"),
    (18, "x87 register stack"),
    (19, "ymm1-15 upper halves"),
    (20, "AVX-512 (zmm16-31, opmask)"),
];

fn available(kind: u8) -> bool {
    match kind {
        14 | 19 => std::arch::is_x86_feature_detected!("avx"),
        20 => std::arch::is_x86_feature_detected!("avx512f"),
        _ => true,
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn vector_register_state_left_by_a_request_is_invisible_to_the_next() {
    require_kvm();
    let t = isolate();
    let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    for query in ["mem", ""] {
        let clean = fresh(&t, &digest_request(&[], query));
        let mut inst = t.instance().unwrap();
        for (kind, name) in VECTOR_KINDS {
            if !available(kind) {
                eprintln!("{name}: not on this CPU");
                continue;
            }
            let dirty = digest_request(&op(kind, 3, &data), query);
            let got = answer(&mut inst, &dirty);
            assert_eq!(got[..23], clean[..23], "{name}: state before the changes");
            assert_ne!(got[24..], clean[24..], "{name}: the change must show, or this test proves nothing");
            assert_eq!(
                digest_answer(&mut inst, &digest_request(&[], query)),
                clean,
                "{name} leaked into the next request"
            );
            // In a batch (query "mem": the guest kernel resets, xrstor included).
            let got = inst.call_batch(&[dirty.clone(), digest_request(&[], query), dirty, digest_request(&[], query)]);
            for (i, r) in got.iter().enumerate().skip(1).step_by(2) {
                let body = String::from_utf8_lossy(&r.as_ref().unwrap().response.body).into_owned();
                assert_eq!(body, clean, "{name} leaked into batched request {i} (query {query:?})");
            }
        }
        // All of them at once, the next request sees none.
        let all: Vec<u8> =
            VECTOR_KINDS.iter().filter(|(k, _)| available(*k)).flat_map(|(k, _)| op(*k, 0, &data)).collect();
        answer(&mut inst, &digest_request(&all, query));
        assert_eq!(digest_answer(&mut inst, &digest_request(&[], query)), clean);
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn the_probe_sees_every_kind_of_state_when_it_is_kept() {
    // Stateful mode keeps state, so every probe kind must show in the next request: the
    // isolation tests above are not vacuous.
    require_kvm();
    let t = tenant("isolate", |c| c.ephemeral = false);
    let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    for kind in 1..=25u8 {
        if !available(kind) {
            continue;
        }
        let mut inst = t.instance().unwrap();
        let clean = digest_answer(&mut inst, &digest_request(&[], ""));
        answer(&mut inst, &digest_request(&op(kind, 3, &data), ""));
        assert_ne!(digest_answer(&mut inst, &digest_request(&[], "")), clean, "probe kind {kind} was not visible");
    }
    // Host writes too: uname into scratch.
    let mut inst = t.instance().unwrap();
    let clean = digest_answer(&mut inst, &digest_request(&[], ""));
    inst.call(&syscalls_request(&[[63, common::probe::SCRATCH, 0, 0, 0, 0, 0]], false)).unwrap();
    assert_ne!(digest_answer(&mut inst, &digest_request(&[], "")), clean, "a host write was not visible");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn the_stack_pointer_and_registers_at_respond_are_not_the_next_requests() {
    // `/deep` responds from a frame 4 KiB below main's with junk in rbx and r12-r15; the probe
    // digests rsp and those registers as they are at the return from wait_for_request.
    require_kvm();
    let t = isolate();
    let deep = Request { method: b"GET".to_vec(), path: b"/deep".to_vec(), ..Default::default() };
    for query in ["mem", ""] {
        let clean = fresh(&t, &digest_request(&[], query));
        let mut inst = t.instance().unwrap();
        assert_eq!(answer(&mut inst, &deep), "deep");
        assert_eq!(digest_answer(&mut inst, &digest_request(&[], query)), clean, "single calls (query {query:?})");
        let got =
            inst.call_batch(&[deep.clone(), digest_request(&[], query), deep.clone(), digest_request(&[], query)]);
        let bodies: Vec<String> =
            got.iter().map(|r| String::from_utf8_lossy(&r.as_ref().unwrap().response.body).into_owned()).collect();
        assert_eq!(bodies, ["deep", clean.as_str(), "deep", clean.as_str()], "batched (query {query:?})");
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_host_write_marks_exactly_the_pages_it_touches() {
    // The reset copies back every page the host wrote for a request (else its bytes leak) and
    // no other (else every host write costs extra copies, and an off-by-one in the bitmap
    // hides behind the over-copy).  Counted as pages restored after getrandom into the probe's
    // scratch memory (which the program only reads), against the same call writing nothing
    // just before.  Every length is over 256 bytes: smaller calls the guest kernel answers
    // itself from its entropy pool, without the host.
    require_kvm();
    let t = isolate();
    let page = 4096;
    for (at, len, pages) in [
        (0, 300, 1),
        (0, page, 1),
        (page - 150, 300, 2),
        (page, 2 * page, 2),
        (100, 3 * page, 4),
        (15 * page + 8, page - 8, 1),
    ] {
        // A new instance for each case: a page written in two resets becomes hot (copied back
        // every time until the next demotion, reset.rs), which would blur the count.
        let mut inst = t.instance().unwrap();
        let mut host_pages = |len: u64| {
            let r = inst.call(&syscalls_request(&[[318, SCRATCH + at, len, 0, 0, 0, 0]], false)).unwrap();
            assert_eq!(words(&r.response.body)[0], len, "getrandom({at:#x}, {len})");
            inst.stats().last_reset.pages_restored
        };
        host_pages(0);
        let base = host_pages(0);
        let got = host_pages(len);
        assert_eq!(got - base, pages, "getrandom({at:#x}, {len}): {got} pages restored, {base} without it");
        // Nothing the host wrote stays marked for the next reset.
        assert_eq!(host_pages(0), base, "after getrandom({at:#x}, {len})");
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn the_request_area_holds_nothing_of_an_earlier_request() {
    // Every request's read-only request area is mapped whole, beyond the request's own bytes:
    // what a longer earlier request left there must be gone (Instance::place_request).
    // The probe writes the first 8 KiB of the area to its stdout.
    require_kvm();
    const REQUEST_VA: u64 = 0x7f00_0000_0000;
    let marker = b"EARLIER-REQUEST;";
    let seen = |out: &[u8]| out.windows(marker.len()).any(|w| w == marker);
    let dump = |query: Vec<u8>| Request { query, ..syscalls_request(&[[1, 1, REQUEST_VA, 8192, 0, 0, 0]], false) };
    let t = isolate();
    let mut inst = t.instance().unwrap();
    let long = dump(marker.repeat(200));
    let r = inst.call(&long).unwrap();
    assert!(seen(&r.stdout), "the dump does not show the request's own bytes");
    let r = inst.call(&dump(Vec::new())).unwrap();
    assert!(!seen(&r.stdout), "a request sees the earlier one's bytes in the request area");
    // After a batch, too (requests packed one after the other).
    inst.call_batch(&[long.clone(), long.clone()]);
    assert!(inst.stats().batches > 0);
    let r = inst.call(&dump(Vec::new())).unwrap();
    assert!(!seen(&r.stdout), "a request sees a batched one's bytes in the request area");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn every_request_draws_randomness_from_a_full_pool() {
    // The guest kernel answers a getrandom of up to 256 bytes from a pool of host randomness
    // (and zeroes what it hands out); the host refills the pool after every request that
    // drew from it (Instance::refill_entropy_if_used), so each request's getrandom costs no
    // exit, not only the first one's.
    require_kvm();
    let t = isolate();
    let mut inst = t.instance().unwrap();
    let exits = |inst: &mut vmm::Instance, req: &Request| {
        inst.call(req).unwrap();
        inst.stats().last_call_exits
    };
    let nothing = exits(&mut inst, &syscalls_request(&[], false));
    let draw = syscalls_request(&[[318, SCRATCH, 200, 0, 0, 0, 0]], false);
    let draws: Vec<u64> = (0..6).map(|_| exits(&mut inst, &draw)).collect();
    assert_eq!(draws, [nothing; 6], "exits of requests drawing 200 random bytes (one that calls nothing: {nothing})");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_long_request_leaves_nothing_past_the_end_of_a_shorter_one() {
    // The same with requests of megabytes, where the tail of the earlier one lies far past
    // the first 8 KiB: a 4 MiB request area, then a 3 MiB request, whose view of the area
    // 3.5 MiB in must hold nothing of the 4 MiB one before it.  (Zeroing the tail as a range
    // that runs past the vCPU area would zero nothing at all.)
    require_kvm();
    const REQUEST_VA: u64 = 0x7f00_0000_0000;
    const MIB: usize = 1 << 20;
    let marker = b"EARLIER-REQUEST;";
    let seen = |out: &[u8]| out.windows(marker.len()).any(|w| w == marker);
    let at = REQUEST_VA + (3 * MIB + MIB / 2) as u64;
    let dump = |query: Vec<u8>| Request { query, ..syscalls_request(&[[1, 1, at, 8192, 0, 0, 0]], false) };
    let t = tenant("isolate", |c| {
        c.limits.max_request = 4 * MIB;
        c.timeout = Duration::from_secs(10);
    });
    let mut inst = t.instance().unwrap();
    let r = inst.call(&dump(marker.repeat((4 * MIB - 64 * 1024) / marker.len()))).unwrap();
    assert!(seen(&r.stdout), "the dump does not show the request's own bytes");
    let r = inst.call(&dump(vec![b'x'; 3 * MIB])).unwrap();
    assert!(!seen(&r.stdout), "a request sees the earlier one's bytes past its own end");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_host_write_into_shared_memory_lands_where_asked() {
    // System calls write into the tenant's shared memory through the same path as into RAM
    // (UserMemory::write), at the mapping's own offset.  getrandom fills 300 bytes at offset
    // 8 (over 256: the host answers it, not the guest kernel's pool), and the probe writes
    // the first 512 bytes of the region to its stdout.
    require_kvm();
    const SHARED_VA: u64 = 0x7e00_0000_0000;
    let t = tenant("isolate", |c| c.shared_memory = 4096);
    let mut inst = t.instance().unwrap();
    let calls = [[318, SHARED_VA + 8, 300, 0, 0, 0, 0], [1, 1, SHARED_VA, 512, 0, 0, 0]];
    let r = inst.call(&syscalls_request(&calls, false)).unwrap();
    assert_eq!(words(&r.response.body)[..2], [300, 512], "getrandom, write");
    let region = &r.stdout;
    assert_eq!(region.len(), 512);
    assert!(region[..8].iter().chain(&region[308..]).all(|&b| b == 0), "written outside [8, 308): {region:?}");
    assert!(region[8..308].iter().filter(|&&b| b == 0).count() < 20, "not written at 8: {region:?}");
}
