//! Tenants: snapshot after init, instances, per-request reset.

mod common;

use common::{require_kvm, tenant};
use vmm::{Failure, Request};

fn get(path: &str) -> Request {
    Request { method: b"GET".to_vec(), path: path.as_bytes().to_vec(), ..Default::default() }
}

fn body(inst: &mut vmm::Instance, req: &Request) -> String {
    String::from_utf8(inst.call(req).unwrap().response.body).unwrap()
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn hello_serves_with_one_exit_per_request() {
    require_kvm();
    let t = tenant("hello", |_| {});
    let mut inst = t.instance().unwrap();
    // Creating an instance (a VM, its mappings, the guest kernel started) is timed.
    assert!(inst.stats().create_time > std::time::Duration::ZERO, "{:?}", inst.stats());
    let (mut restored, mut guest, mut reset_time) = (0, 0, std::time::Duration::ZERO);
    for _ in 0..200 {
        let r = inst.call(&get("/")).unwrap();
        assert_eq!(r.response.status, 200);
        assert_eq!(r.response.body, b"Hello World!");
        assert_eq!(r.response.headers, vec![(b"content-type".to_vec(), b"text/plain".to_vec())]);
        let last = inst.stats().last_reset;
        assert!(last.guest_pages <= last.pages_restored, "{last:?}");
        restored += last.pages_restored;
        guest += last.guest_pages;
        reset_time += last.duration;
    }
    let s = inst.stats();
    assert_eq!(s.last_call_exits, 1, "steady-state ephemeral hello must exit exactly once");
    assert_eq!(s.resets, 200);
    // The totals are the sums of what each reset reported.
    assert!(guest >= 200, "every request writes its stack: {guest} pages it wrote restored in 200 resets");
    assert_eq!((s.pages_restored, s.reset_time), (restored, reset_time));
    // Kernel-area pages (page tables whose Accessed/Dirty bits the CPU set) are counted
    // apart and never restored.
    assert!(s.last_reset.pages_restored <= 4, "a hello request touches a few pages, not {:?}", s.last_reset);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn ephemeral_resets_state_and_stateful_keeps_it() {
    require_kvm();
    let mut eph = tenant("state", |_| {}).instance().unwrap();
    let got: Vec<String> = (0..3).map(|_| body(&mut eph, &get("/"))).collect();
    assert_eq!(got, ["1", "1", "1"]);
    let mut st = tenant("state", |c| c.ephemeral = false).instance().unwrap();
    let got: Vec<String> = (0..3).map(|_| body(&mut st, &get("/"))).collect();
    assert_eq!(got, ["1", "2", "3"]);
    assert_eq!(st.stats().last_call_exits, 1, "respond_and_wait: one exit per stateful request");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn instances_share_the_snapshot_but_not_their_writes() {
    require_kvm();
    let t = tenant("state", |c| c.ephemeral = false);
    let mut a = t.instance().unwrap();
    let mut b = t.instance().unwrap();
    assert_eq!(body(&mut a, &get("/")), "1");
    assert_eq!(body(&mut a, &get("/")), "2");
    assert_eq!(body(&mut b, &get("/")), "1", "b must not see a's writes");
    assert_eq!(body(&mut a, &get("/")), "3");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn counter_in_shared_memory_never_loses_an_increment() {
    require_kvm();
    let t = tenant("counter", |c| c.shared_memory = 4096);
    let threads = 4;
    let per = 250;
    std::thread::scope(|s| {
        for _ in 0..threads {
            let t = &t;
            s.spawn(move || {
                let mut inst = t.instance().unwrap();
                for _ in 0..per {
                    inst.call(&get("/")).unwrap();
                }
            });
        }
    });
    let mut inst = t.instance().unwrap();
    assert_eq!(body(&mut inst, &get("/")), format!("Hello {} World!", threads * per + 1));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn echo_is_binary_safe() {
    require_kvm();
    let mut inst = tenant("echo", |_| {}).instance().unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let req = Request {
        method: b"POST".to_vec(),
        path: b"/a/b".to_vec(),
        query: b"x=1&y=%00".to_vec(),
        headers: vec![(b"Host".to_vec(), b"echo".to_vec()), (b"X-Bin".to_vec(), b"\x01\xff".to_vec())],
        body: payload.clone(),
    };
    let r = inst.call(&req).unwrap().response;
    assert_eq!(r.body, payload);
    let h = |n: &str| r.headers.iter().find(|(k, _)| k == n.as_bytes()).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(h("x-echo-method"), b"POST");
    assert_eq!(h("x-echo-path"), b"/a/b");
    assert_eq!(h("x-echo-query"), b"x=1&y=%00");
    assert_eq!(h("x-echo-header-count"), b"2");
    assert_eq!(h("x-echo-h-X-Bin"), b"\x01\xff");
    // A shorter request after a longer one sees nothing of the longer one.
    let r = inst.call(&Request { body: b"ab".to_vec(), ..get("/") }).unwrap().response;
    assert_eq!(r.body, b"ab");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn oversize_request_is_refused_without_running() {
    require_kvm();
    let mut inst = tenant("echo", |c| c.limits.max_request = 4096).instance().unwrap();
    let err = inst.call(&Request { body: vec![0; 5000], ..get("/") }).unwrap_err();
    assert!(matches!(err.kind, Failure::RequestTooLarge(_)));
    assert_eq!(inst.stats().exits, 1, "only the instance's boot exit");
    assert_eq!(body(&mut inst, &Request { body: b"ok".to_vec(), ..get("/") }), "ok");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn every_guest_failure_is_typed_and_the_instance_keeps_serving() {
    require_kvm();
    for ephemeral in [true, false] {
        let t = tenant("misbehave", |c| {
            c.ephemeral = ephemeral;
            c.memory = 24 << 20;
            c.timeout = std::time::Duration::from_millis(1000);
        });
        let mut inst = t.instance().unwrap();
        let mut cases = common::misbehave_failures();
        cases.push(("/sleep?ms=1000", |k| matches!(k, Failure::Timeout { .. })));
        for (path, expected) in cases {
            let (p, q) = path.split_once('?').unwrap_or((path, ""));
            let req = Request { path: p.as_bytes().to_vec(), query: q.as_bytes().to_vec(), ..get("/") };
            let err = inst.call(&req).unwrap_err();
            assert!(expected(&err.kind), "{path} (ephemeral={ephemeral}): {:?}", err.kind);
            // The failure reset the instance to the snapshot: the count starts over.
            assert_eq!(body(&mut inst, &get("/count")), "1", "{path} (ephemeral={ephemeral})");
            if !ephemeral {
                assert_eq!(body(&mut inst, &get("/count")), "2");
                // Back to the snapshot for the next case.
                inst.call(&get("/fault")).unwrap_err();
            }
        }
        assert!(inst.usable());
        let nap = Request { path: b"/sleep".to_vec(), query: b"ms=5".to_vec(), ..get("/") };
        assert_eq!(body(&mut inst, &nap), "ok");
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn reset_restores_only_the_pages_a_request_touched() {
    require_kvm();
    let mut inst = tenant("misbehave", |_| {}).instance().unwrap();
    let dirty = |kb: u32| Request { path: b"/dirty".to_vec(), query: format!("kb={kb}").into_bytes(), ..get("/") };
    inst.call(&dirty(0)).unwrap();
    inst.call(&dirty(0)).unwrap();
    let base = inst.stats().last_reset.pages_restored;
    for kb in [64u64, 256, 1024] {
        inst.call(&dirty(kb as u32)).unwrap();
        let restored = inst.stats().last_reset.pages_restored;
        assert!(
            restored >= kb / 4 && restored <= kb / 4 + base + 4,
            "{kb} KiB written, {restored} pages restored (base {base})"
        );
    }
    assert_eq!(body(&mut inst, &get("/count")), "1");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn data_right_after_the_kernel_area_is_reset() {
    // A musl program of a few KiB has its data in the first bitmap word after the kernel area
    // (whose pages the reset leaves alone): that word must be restored like any other.
    require_kvm();
    let t = tenant("small_tenant.musl", |_| {});
    let image = common::app("small_tenant.musl").image().clone();
    assert!(image.end - image.start < 256 << 10, "the program must fit in 256 KiB: {image:?}");
    let mut inst = t.instance().unwrap();
    let got: Vec<String> = (0..3).map(|_| body(&mut inst, &get("/"))).collect();
    assert_eq!(got, ["1", "1", "1"]);
    let mut batched = t.instance().unwrap();
    let got: Vec<Vec<u8>> =
        batched.call_batch(&vec![get("/"); 4]).into_iter().map(|r| r.unwrap().response.body).collect();
    assert_eq!(got, vec![b"1".to_vec(); 4]);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn pages_that_stop_being_written_stop_being_copied_back() {
    // Resets between two demotions (reset.rs's DEMOTE_EVERY, 64; loops of more than twice
    // that cross a demotion whatever its exact period up to 128).
    const DEMOTE_EVERY: u64 = 130;
    // Pages written in a row stay writable ("hot") and are copied back at every reset; every
    // DEMOTE_EVERY resets they are re-protected, so one no longer written stops costing a copy.
    require_kvm();
    let mut inst = tenant("misbehave", |_| {}).instance().unwrap();
    let dirty = |kb: u32| Request { path: b"/dirty".to_vec(), query: format!("kb={kb}").into_bytes(), ..get("/") };
    // Past the first demotion, so a schedule that demoted only early on would show.
    for _ in 0..DEMOTE_EVERY + 6 {
        inst.call(&dirty(0)).unwrap();
    }
    let base = inst.stats().last_reset;
    inst.call(&dirty(64)).unwrap();
    let once = inst.stats().last_reset;
    assert!(once.hot_pages < base.hot_pages + 16, "pages written once are not hot yet: {base:?} then {once:?}");
    // The first write to 16 pages never written since the snapshot sets their Dirty bits: the
    // page tables holding them are kernel-area pages KVM reports dirty (counted, not restored).
    assert!(once.kernel_pages > 0, "{once:?}");
    for _ in 0..3 {
        inst.call(&dirty(64)).unwrap();
    }
    let hot = inst.stats().last_reset;
    assert!(hot.hot_pages >= base.hot_pages + 16, "16 pages written 4 times in a row: {base:?} then {hot:?}");
    for _ in 0..DEMOTE_EVERY + 4 {
        inst.call(&dirty(0)).unwrap();
    }
    let after = inst.stats().last_reset;
    assert!(
        after.pages_restored <= base.pages_restored + 2 && after.hot_pages <= base.hot_pages + 2,
        "pages no longer written are still copied back: {base:?}, now {after:?}"
    );
    // Only page tables (Accessed/Dirty bits) change in the kernel area: a handful per reset.
    assert!(after.kernel_pages < 64, "{after:?}");
    assert_eq!(body(&mut inst, &get("/count")), "1");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn after_a_demotion_pages_must_be_written_in_a_row_again_to_be_hot() {
    // Every DEMOTE_EVERY (64) resets the hot pages are re-protected and their streaks start
    // over: a page written at every request is hot again only after HOT_AFTER (2) more writes,
    // not at once (reset.rs).  Watched over 140 requests, so at least two demotions.
    require_kvm();
    let mut inst = tenant("misbehave", |_| {}).instance().unwrap();
    let dirty = Request { path: b"/dirty".to_vec(), query: b"kb=64".to_vec(), ..get("/") };
    let hot: Vec<u64> = (0..140)
        .map(|_| {
            inst.call(&dirty).unwrap();
            inst.stats().last_reset.hot_pages
        })
        .collect();
    let demotions: Vec<usize> = (4..hot.len() - 2).filter(|&i| hot[i] == 0).collect();
    assert!(!demotions.is_empty() && hot[3] >= 16, "no demotion seen: {hot:?}");
    for d in demotions {
        if hot[d - 1] == 0 {
            continue; // the reset after a demotion, checked below
        }
        assert_eq!(hot[d + 1], 0, "hot again one write after the demotion at {d}: {hot:?}");
        assert!(hot[d + 2] >= 16, "not hot two writes after the demotion at {d}: {hot:?}");
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn only_hot_pages_are_copied_back_without_being_written() {
    // A page written by one request is re-protected by the reset, so a later request that does
    // not write it does not pay for copying it back; a hot page (written in a row) is left
    // writable and copied back every time, written or not (reset.rs).  Fewer than 64 resets in
    // all (DEMOTE_EVERY), so no demotion happens in between.
    require_kvm();
    let mut inst = tenant("misbehave", |_| {}).instance().unwrap();
    let dirty = |kb: u32| Request { path: b"/dirty".to_vec(), query: format!("kb={kb}").into_bytes(), ..get("/") };
    for _ in 0..8 {
        inst.call(&dirty(0)).unwrap();
    }
    let base = inst.stats().last_reset;
    // Written by every other request, they never become hot: hot means written in HOT_AFTER
    // (2) resets *in a row*, not in any two.
    for _ in 0..6 {
        inst.call(&dirty(64)).unwrap();
        inst.call(&dirty(0)).unwrap();
        let after_once = inst.stats().last_reset;
        assert_eq!(
            (after_once.pages_restored, after_once.hot_pages),
            (base.pages_restored, base.hot_pages),
            "16 pages written by a request are copied back again by the next, which does not write them: \
             {base:?}, then {after_once:?}"
        );
    }
    for _ in 0..4 {
        inst.call(&dirty(64)).unwrap();
    }
    inst.call(&dirty(0)).unwrap();
    let after_hot = inst.stats().last_reset;
    assert!(
        after_hot.pages_restored >= base.pages_restored + 16 && after_hot.hot_pages >= base.hot_pages + 16,
        "16 pages written 4 times in a row are hot, so copied back unwritten: {base:?}, then {after_hot:?}"
    );
    // Pages written once next to hot ones (65 hot pages share a bitmap word with some of the
    // 63 after them, however the heap is aligned) are re-protected all the same.
    for _ in 0..4 {
        inst.call(&dirty(260)).unwrap();
    }
    let hot = inst.stats().last_reset;
    inst.call(&dirty(512)).unwrap();
    inst.call(&dirty(260)).unwrap();
    let after = inst.stats().last_reset;
    assert_eq!(
        (after.pages_restored, after.hot_pages),
        (hot.pages_restored, hot.hot_pages),
        "pages written once beside hot ones are copied back again: {hot:?}, then {after:?}"
    );
    assert_eq!(body(&mut inst, &get("/count")), "1");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn isolation_probe_sees_nothing_of_earlier_requests() {
    require_kvm();
    // Only answers of one snapshot are compared: two boots may differ in what the program
    // drew at random while booting (see boots_differ_only_in_boot_randomness).
    let t = tenant("isolate", |_| {});
    let clean = body(&mut t.instance().unwrap(), &get("/"));
    let mut inst = t.instance().unwrap();
    assert_eq!(body(&mut inst, &get("/")), clean);
    // Change every kind of state once, then check the next request starts clean.
    let mut ops = Vec::new();
    for kind in 1..=25u8 {
        ops.extend_from_slice(&[kind, 7, 0, 4, 0xde, 0xad, 0xbe, kind]);
    }
    let dirty = body(&mut inst, &Request { body: ops, ..get("/") });
    assert_eq!(dirty[..23], clean[..23], "the first digest is taken before the changes");
    assert_ne!(dirty[24..], clean[24..], "the changes must show in the second digest");
    assert_eq!(body(&mut inst, &get("/")), clean);
    let st = tenant("isolate", |c| c.ephemeral = false);
    let stateful_clean = body(&mut st.instance().unwrap(), &get("/"));
    let mut stateful = st.instance().unwrap();
    assert_eq!(body(&mut stateful, &get("/")), stateful_clean);
    body(&mut stateful, &Request { body: vec![1, 0, 0, 1, 9], ..get("/") });
    assert_ne!(body(&mut stateful, &get("/")), stateful_clean, "stateful mode keeps state");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn freezing_allocates_no_page_the_boot_left_a_hole() {
    // The restore view is built from the pages of the snapshot's memfd that hold memory; the
    // others (holes, zero) are never read: reading a hole of a shared memfd allocates it, and
    // most of a tenant's RAM is never touched while it boots (snapshot.rs `freeze`).
    require_kvm();
    let t = tenant("hello", |_| {});
    let view = t.snapshot().ram_view();
    let mut residency = vec![0u8; view.len() / 4096];
    view.residency(&mut residency).unwrap();
    let resident = residency.iter().filter(|&&b| b & 1 != 0).count() as u64;
    // At most (not exactly: the host may reclaim some since) the pages counted at the freeze.
    assert!(
        resident <= t.snapshot().resident_pages(),
        "{resident} pages resident, {} at the freeze",
        t.snapshot().resident_pages()
    );
    assert!(resident < residency.len() as u64 / 4, "{resident} of {} pages resident", residency.len());
}

/// The snapshot pages that differ between two boots of `name`, as (guest address, bytes that
/// differ) pairs.
fn snapshot_differences(a: &vmm::Tenant, b: &vmm::Tenant) -> Vec<(u64, usize)> {
    let (x, y) = (a.snapshot().ram_view(), b.snapshot().ram_view());
    assert_eq!(x.len(), y.len());
    let offset = a.snapshot().map().ram_offset();
    let (mut p, mut q) = (vec![0u8; 4096], vec![0u8; 4096]);
    let mut out = Vec::new();
    for page in 0..(x.len() / 4096) as u64 {
        x.read(page * 4096, &mut p).unwrap();
        y.read(page * 4096, &mut q).unwrap();
        let n = p.iter().zip(&q).filter(|(a, b)| a != b).count();
        if n > 0 {
            out.push((page * 4096 + offset, n));
        }
    }
    out
}

/// Investigation of boot-to-boot differences (run with `--ignored`; prints, asserts little):
/// which snapshot pages and which probe digests differ between boots of `isolate`.  On PVM
/// (2026-12) the probe's digests agreed over every boot; the snapshots differ in the pages
/// holding what was drawn at random while booting (AT_RANDOM, the stack guard copies, glibc's
/// tcache key, the guest kernel's entropy pool).
#[test]
#[ignore = "investigation: prints the differences between boots"]
fn boots_differ_only_in_boot_randomness() {
    require_kvm();
    let boots: Vec<vmm::Tenant> = (0..8).map(|i| tenant("isolate", |c| c.ephemeral = i % 2 == 0)).collect();
    let parts = |t: &vmm::Tenant| body(&mut t.instance().unwrap(), &Request { query: b"parts".to_vec(), ..get("/") });
    let first = parts(&boots[0]);
    for (i, b) in boots.iter().enumerate().skip(1) {
        let other = parts(b);
        for (x, y) in first.lines().zip(other.lines()) {
            if x != y {
                eprintln!("boot {i}: probe part differs: {x} / {y}");
            }
        }
        let map = b.snapshot().map();
        for (va, n) in snapshot_differences(&boots[0], b) {
            let area = map.areas().iter().find(|a| (a.start..a.end).contains(&va));
            eprintln!("boot {i}: snapshot page {va:#x}: {n} bytes differ ({area:?})");
        }
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_seccomp_restricted_thread_still_serves_requests() {
    require_kvm();
    let t = tenant("misbehave", |c| c.timeout = std::time::Duration::from_millis(300));
    std::thread::spawn(move || {
        vmm::sandbox::restrict_current_thread().unwrap();
        // Creating instances, serving, failing and resetting all work under the filter...
        let mut inst = t.instance().unwrap();
        assert_eq!(body(&mut inst, &get("/count")), "1");
        assert!(matches!(inst.call(&get("/spin")).unwrap_err().kind, Failure::Timeout { .. }));
        assert!(matches!(inst.call(&get("/fault")).unwrap_err().kind, Failure::Fault(_)));
        assert_eq!(body(&mut inst, &get("/count")), "1");
        // ...while the host syscalls a compromised thread would want are refused.
        let e = std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let e = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    })
    .join()
    .unwrap();
}

// --- time limits and a starved host thread ----------------------------------------------------

fn timed(inst: &mut vmm::Instance, url: &str) -> (Result<vmm::CallResult, vmm::CallError>, std::time::Duration) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let req = Request { query: query.as_bytes().to_vec(), ..get(path) };
    let t = std::time::Instant::now();
    let r = inst.call(&req);
    (r, t.elapsed())
}

fn ok(r: Result<vmm::CallResult, vmm::CallError>) -> Vec<u8> {
    r.unwrap().response.body
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
#[cfg_attr(tenantvm_no_realtime, ignore = "SCHED_FIFO not allowed")]
fn time_the_host_kept_the_thread_off_the_cpu_is_not_charged() {
    require_kvm();
    let ms = std::time::Duration::from_millis;
    // The limit leaves room for the whole 20 ms of work to be charged (under a quarter of it,
    // whenever the starving thread starts), and the starvation outlasts the limit: without the
    // grace the call would time out, with it the call succeeds.
    let limit = ms(200);
    let t = tenant("misbehave", |c| c.timeout = limit);
    let mut inst = t.instance().unwrap();
    assert_eq!(ok(timed(&mut inst, "/busy?ms=1").0), b"ok");
    // 20 ms of work, during which a real-time thread takes this thread's CPU for 300 ms (past
    // the limit, and 130 ms inside limit + MAX_STARVATION_GRACE, the most the grace gives).  The
    // thread starts 2 ms into the call; where the host wakes it late (the emulated AMD-V rig
    // under load woke it after the work was done), the call is not starved and proves
    // nothing, so it is tried again, a few times at most.
    let mut starved = None;
    for _ in 0..5 {
        let Some(hog) = common::hog::Hog::start(ms(2), ms(300)) else { return };
        let (r, took) = timed(&mut inst, "/busy?ms=20");
        drop(hog);
        assert_eq!(ok(r), b"ok", "starved for {took:?}");
        if took > limit {
            starved = Some(took);
            break;
        }
    }
    assert!(starved.is_some(), "the thread was never starved past its limit: the test proves nothing");
    assert!(inst.stats().starvation_grants >= 1);
    // A program that spins is still stopped: it is charged every moment it runs.
    let Some(hog) = common::hog::Hog::start(ms(2), ms(300)) else { return };
    let (r, took) = timed(&mut inst, "/spin");
    drop(hog);
    assert!(matches!(r.unwrap_err().kind, Failure::Timeout { .. }));
    assert!(took < limit + ms(300) + vmm::MAX_STARVATION_GRACE, "took {took:?}");
    assert_eq!(body(&mut inst, &get("/count")), "1");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn cpu_time_the_host_took_inside_kvm_run_is_not_charged() {
    require_kvm();
    let ms = std::time::Duration::from_millis;
    // A light request (3 ms of guest work under a 20 ms limit) during which the host keeps
    // the thread busy for 30 ms of CPU inside KVM_RUN (a signal handler spinning, as a nested
    // host's hypervisor or interrupt handling charge the thread: seen on this project's PVM
    // hosts, a hello charged 8-12 ms).  Before, that CPU time counted as the request's: over a
    // quarter of its limit, no grace, a timeout.  Now the time charged past the run's alarm
    // is the host's (stats().host_stalls) and the request is answered.
    let limit = ms(20);
    let t = tenant("misbehave", |c| c.timeout = limit);
    let mut inst = t.instance().unwrap();
    assert_eq!(ok(timed(&mut inst, "/busy?ms=1").0), b"ok");
    let stall = ms(30);
    // The stall proves something only when the signal lands inside KVM_RUN (not in the host's
    // handling of an exit: under the emulated-CPU rig /busy's clock reads leave the guest) and
    // the host then lets the thread finish within limit + MAX_STARVATION_GRACE (it may keep it
    // waiting longer at a load of 10+); otherwise it is tried again, a few times at most.
    let mut conclusive = 0;
    for _ in 0..8 {
        let before = inst.stats().host_stalls;
        let armed = common::stall::Stall::after(ms(1), stall);
        let (r, took) = timed(&mut inst, "/busy?ms=3");
        drop(armed);
        let credited = inst.stats().host_stalls - before;
        if credited < stall / 2 || took > limit + vmm::MAX_STARVATION_GRACE {
            eprintln!("inconclusive: {credited:?} of host stall seen, call took {took:?}");
            continue;
        }
        assert_eq!(ok(r), b"ok", "stalled for {credited:?}, took {took:?}");
        conclusive += 1;
        if conclusive == 2 {
            break;
        }
    }
    assert!(conclusive > 0, "the stall never landed inside KVM_RUN: the test proves nothing");
    // A program that spins is still stopped: the guest's own time is charged in full.
    let (r, took) = timed(&mut inst, "/spin");
    assert!(matches!(r.unwrap_err().kind, Failure::Timeout { .. }));
    assert!(took < limit + vmm::MAX_STARVATION_GRACE + ms(2000), "took {took:?}");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_program_sharing_a_busy_cpu_still_stops_at_its_wall_clock_limit() {
    require_kvm();
    // On a quiet host it gets about half the CPU: charged for well over a quarter of its
    // limit, no grace.  On a host loaded by others it may get less and be granted the grace,
    // but the grace is bounded: wall time still bounds what a spinning tenant takes from
    // others.  (Whether a grace was granted depends on the host's load, so it is not asserted:
    // the last CI run failed on it at a load average of 10.)  The limit is 100 ms, not less:
    // the `/count` that follows runs under it too, and under the emulated AMD-V CPU at a load
    // of 10 a 20 ms limit timed it out.  The busy thread spins past the limit and the grace.
    let limit = std::time::Duration::from_millis(100);
    let t = tenant("misbehave", |c| c.timeout = limit);
    let mut inst = t.instance().unwrap();
    let spin = limit + vmm::MAX_STARVATION_GRACE + std::time::Duration::from_millis(50);
    let Some(hog) = common::hog::Hog::share(std::time::Duration::ZERO, spin) else {
        return;
    };
    let (r, took) = timed(&mut inst, "/spin");
    drop(hog);
    assert!(matches!(r.unwrap_err().kind, Failure::Timeout { .. }), "took {took:?}");
    let grants = inst.stats().starvation_grants;
    eprintln!("spinning beside a busy thread: stopped after {took:?}, {grants} starvation grant(s)");
    // The grace, however often granted, extends the limit by at most MAX_STARVATION_GRACE in
    // all; the bound is loose (a loaded host delays the stop itself) but finite.
    assert!(took < limit + vmm::MAX_STARVATION_GRACE + std::time::Duration::from_secs(2), "took {took:?}");
    assert_eq!(body(&mut inst, &get("/count")), "1");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn sleeping_is_charged_like_running() {
    require_kvm();
    let t = tenant("misbehave", |c| c.timeout = std::time::Duration::from_millis(100));
    let mut inst = t.instance().unwrap();
    // 60 ms asleep, then 60 ms of work: over the limit, though only 60 ms ran.
    let (r, took) = timed(&mut inst, "/busy?ms=60&sleep=60");
    assert!(matches!(r.unwrap_err().kind, Failure::Timeout { .. }), "took {took:?}");
    assert_eq!(ok(timed(&mut inst, "/busy?ms=5&sleep=5").0), b"ok");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_sleep_longer_than_a_look_at_the_clocks_is_within_the_limit() {
    require_kvm();
    // A run looks at its clocks every limit/8 (host stalls); a sleep is still measured
    // against the request's deadline, not against the next look (a sleep of 40 ms under a
    // 500 ms limit was a timeout at once when the next look was taken for the deadline).
    let t = tenant("misbehave", |c| c.timeout = std::time::Duration::from_millis(500));
    let mut inst = t.instance().unwrap();
    let (r, took) = timed(&mut inst, "/sleep?ms=200");
    assert_eq!(ok(r), b"ok", "took {took:?}");
    assert!(took >= std::time::Duration::from_millis(200), "took {took:?}");
}
