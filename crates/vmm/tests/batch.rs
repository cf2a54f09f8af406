//! Batched requests: several requests per `KVM_RUN`, memory reset by the guest kernel between
//! them.  Every result must be what separate calls would give.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{require_kvm, tenant};
use vmm::{CallResult, Failure, Instance, Request};

fn req(path: &str) -> Request {
    let (p, q) = path.split_once('?').unwrap_or((path, ""));
    Request { method: b"GET".to_vec(), path: p.as_bytes().to_vec(), query: q.as_bytes().to_vec(), ..Default::default() }
}

fn text(r: &CallResult) -> String {
    String::from_utf8(r.response.body.clone()).unwrap()
}

fn batch_bodies(inst: &mut Instance, reqs: &[Request]) -> Vec<String> {
    inst.call_batch(reqs).iter().map(|r| text(r.as_ref().expect("call failed"))).collect()
}

/// Runs `f` on a thread of its own and returns its result, failing if `f` has not returned
/// within two minutes: a batch that never ends fails the test instead of hanging it (the
/// tests that use this take a second or two, under the emulated CPU well under a minute).
fn or_hung<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what} never ended"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked (above)"),
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_batch_of_hello_requests_costs_one_exit() {
    require_kvm();
    let t = tenant("hello", |_| {});
    let mut inst = t.instance().unwrap();
    inst.call(&req("/")).unwrap();
    for _ in 0..5 {
        let exits = inst.stats().exits;
        let results = inst.call_batch(&vec![req("/"); 32]);
        assert_eq!(results.len(), 32);
        for r in &results {
            let r = r.as_ref().unwrap();
            assert_eq!(r.response.status, 200);
            assert_eq!(r.response.body, b"Hello World!");
            assert_eq!(r.response.headers, vec![(b"content-type".to_vec(), b"text/plain".to_vec())]);
        }
        assert_eq!(inst.stats().exits - exits, 1, "32 hello requests, one exit");
    }
    let s = inst.stats();
    assert_eq!(s.batches, 5);
    assert_eq!(s.guest_resets, 5 * 32);
    assert_eq!(s.calls, 1 + 5 * 32);
    assert_eq!(s.errors, 0);
    // More than fits one batch: split, in order.
    let many: Vec<Request> = (0..70).map(|_| req("/")).collect();
    assert!(inst.call_batch(&many).iter().all(|r| r.as_ref().unwrap().response.body == b"Hello World!"));
    assert_eq!(inst.stats().batches, 8);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn batched_requests_start_from_the_snapshot() {
    require_kvm();
    // Not a test of time limits: a generous one, so that a request kept off the CPU by a
    // loaded host does not time out (the default 1 s did, at load 10).
    let mut eph = tenant("misbehave", |c| c.timeout = Duration::from_secs(20)).instance().unwrap();
    let got = batch_bodies(&mut eph, &vec![req("/count"); 20]);
    assert_eq!(got, vec!["1"; 20]);
    // Requests that write many pages are restored as completely.
    let reqs: Vec<Request> =
        [64, 0, 512, 0, 2048, 0].iter().flat_map(|kb| [req(&format!("/dirty?kb={kb}")), req("/count")]).collect();
    let got = batch_bodies(&mut eph, &reqs);
    assert!(got.iter().step_by(2).all(|b| b == "ok"));
    assert!(got.iter().skip(1).step_by(2).all(|b| b == "1"), "{got:?}");
    assert!(eph.stats().guest_pages_restored >= (64 + 512 + 2048) / 4);
    // Stateful tenants run their calls one after the other: state carries over.
    let mut st = tenant("misbehave", |c| c.ephemeral = false).instance().unwrap();
    assert_eq!(batch_bodies(&mut st, &vec![req("/count"); 3]), ["1", "2", "3"]);
    assert_eq!(st.stats().batches, 0);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn failures_in_a_batch_are_per_request() {
    require_kvm();
    // The limit is generous: /oom must run out of memory before it (24 MiB of malloc, an
    // exit per mmap) and, under the emulated-CPU rig on a loaded host, 300 ms was not enough
    // (a Timeout instead of OutOfMemory).  Only the two /spin requests wait for it.
    let t = tenant("misbehave", |c| {
        c.memory = 24 << 20;
        c.timeout = Duration::from_secs(2);
    });
    let mut inst = t.instance().unwrap();
    let cases = common::misbehave_failures();
    // Each failure between two good requests, all in one batch.
    let mut reqs = vec![req("/count")];
    for (path, _) in &cases {
        reqs.push(req(path));
        reqs.push(req("/count"));
    }
    let results = inst.call_batch(&reqs);
    assert_eq!(results.len(), reqs.len());
    for (i, r) in results.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(text(r.as_ref().unwrap()), "1", "request {i}");
        } else {
            let (path, expected) = &cases[i / 2];
            let err = r.as_ref().unwrap_err();
            assert!(expected(&err.kind), "{path}: {:?}", err.kind);
        }
    }
    assert!(inst.usable());
    assert_eq!(inst.stats().errors, cases.len() as u64);
    assert_eq!(batch_bodies(&mut inst, &vec![req("/count"); 4]), vec!["1"; 4]);
    // While a batched request runs, the host looks every eighth of the limit whether it ran
    // out (run_batch's CHECK), so a request that spins to its limit is interrupted some
    // eight times, however loaded the host: counted in exits, not measured in time.
    let exits = inst.stats().exits;
    let results = inst.call_batch(&[req("/count"), req("/spin"), req("/count")]);
    assert!(matches!(results[1].as_ref().unwrap_err().kind, vmm::Failure::Timeout { .. }));
    let looks = inst.stats().exits - exits;
    assert!(looks >= 5, "a request spinning to its limit was looked at {looks} times");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_request_that_spins_first_in_a_batch_is_stopped_at_its_limit() {
    // The host starts the first request of a batch (and the first after a request it
    // finished), the guest kernel the others; a spinning request of either kind must stop at
    // its limit.  Counting a request's time from a look that saw a *different* request
    // running (mutation 224:36 of run N) still stopped the guest-started ones, but never the
    // first: the batch spun forever.
    require_kvm();
    let results = or_hung("a batch whose first request spins", || {
        let t = tenant("misbehave", |c| c.timeout = Duration::from_millis(300));
        let mut inst = t.instance().unwrap();
        let results = inst.call_batch(&[req("/spin"), req("/count"), req("/spin"), req("/count")]);
        results.into_iter().map(|r| r.map(|r| text(&r)).map_err(|e| e.kind)).collect::<Vec<_>>()
    });
    assert!(matches!(results[0], Err(Failure::Timeout { .. })), "{results:?}");
    assert!(matches!(results[2], Err(Failure::Timeout { .. })), "{results:?}");
    assert_eq!((results[1].as_deref(), results[3].as_deref()), (Ok("1"), Ok("1")), "{results:?}");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn every_batched_request_gets_its_own_time_limit() {
    require_kvm();
    let t = tenant("misbehave", |c| c.timeout = Duration::from_millis(250));
    let mut inst = t.instance().unwrap();
    // Six requests of 100 ms: the batch runs 600 ms, each request well inside 250 ms.
    let results = inst.call_batch(&vec![req("/busy?ms=100"); 6]);
    assert!(results.iter().all(|r| r.as_ref().map(text).as_deref() == Ok("ok")), "{results:?}");
    assert_eq!(inst.stats().batches, 1);
    // One over the limit fails alone.  It runs for longer than the limit plus the most a
    // starved request is given back (MAX_STARVATION_GRACE): on a loaded host a 400 ms request
    // was charged so little CPU that the grace let it finish.
    let over = (Duration::from_millis(250) + vmm::MAX_STARVATION_GRACE) * 4;
    let results =
        inst.call_batch(&[req("/busy?ms=100"), req(&format!("/busy?ms={}", over.as_millis())), req("/busy?ms=100")]);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1].as_ref().unwrap_err().kind, Failure::Timeout { .. }));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn requests_that_call_the_host_still_come_out_right() {
    require_kvm();
    // Output, sleeping and file descriptors are host system calls: such a request is finished
    // by the host, which resets and restarts the batch after it.
    let t = tenant("misbehave", |_| {});
    let mut inst = t.instance().unwrap();
    let reqs =
        [req("/count"), req("/sleep?ms=1"), req("/count"), req("/sleep?ms=2"), req("/sleep?ms=1"), req("/count")];
    assert_eq!(batch_bodies(&mut inst, &reqs), ["1", "ok", "1", "ok", "ok", "1"]);
    // One batch throughout: after each request the host finished, the batch goes on at the
    // next one (no new batch, no request counted twice or not at all); the three that slept
    // were reset by the host, the others by the guest kernel.
    let s = inst.stats();
    assert_eq!((s.batches, s.calls, s.errors, s.resets, s.guest_resets), (1, 6, 0, 3, 3), "{s:?}");
    // A request too large for the area fails alone; the rest are served.
    let big = Request { body: vec![b'x'; 2 << 20], ..req("/count") };
    let results = inst.call_batch(&[req("/count"), big, req("/count")]);
    assert!(matches!(results[1].as_ref().unwrap_err().kind, Failure::RequestTooLarge(_)));
    assert_eq!(text(results[0].as_ref().unwrap()), "1");
    assert_eq!(text(results[2].as_ref().unwrap()), "1");
}

/// A deterministic stream of isolation-probe requests (the op format of apps/examples/isolate.c).
fn probe_requests(seed: u64, count: usize) -> Vec<Request> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let mut body = Vec::new();
            for _ in 0..next() % 6 {
                // Mostly memory and register changes; now and then a system call.
                let kind = if next() % 4 == 0 {
                    (next() % 20 + 1) as u8
                } else {
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 17, 18, 19, 20][(next() % 14) as usize]
                };
                let len = (next() % 8 + 1) as u8;
                let off = (next() % 8192) as u16;
                body.push(kind);
                body.extend_from_slice(&off.to_le_bytes());
                body.push(len);
                body.extend((0..len).map(|_| next() as u8));
            }
            // Half the requests digest memory and registers only ("mem": no system calls, so
            // the guest kernel resets them), half everything (the host does).
            let query = if next() % 2 == 0 { b"mem".to_vec() } else { Vec::new() };
            Request { method: b"POST".to_vec(), path: b"/".to_vec(), query, body, ..Default::default() }
        })
        .collect()
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_batched_request_sees_no_other_request_of_its_batch() {
    require_kvm();
    // The probe scans the whole request area for a marker that only other requests carry:
    // the ones after it (queued in the same batch) and the ones before it (left behind).
    let area = 64 << 10;
    let t = tenant("isolate", |c| c.limits.max_request = area);
    let mut inst = t.instance().unwrap();
    let scan = req(&format!("/area?{area}"));
    let marked = |n: usize| Request {
        headers: vec![(b"x-secret".to_vec(), b"XLEAKX42".repeat(n))],
        body: b"XLEAKX42".repeat(n),
        ..req("/deep")
    };
    // The scan must be able to see a marker at all: its own request's, here.
    let own = Request { headers: vec![(b"x-secret".to_vec(), b"XLEAKX42".to_vec())], ..scan.clone() };
    assert_eq!(batch_bodies(&mut inst, &[own.clone(), own]), ["1", "1"]);
    let reqs = [scan.clone(), marked(100), scan.clone(), marked(1), scan.clone(), scan];
    let stats = inst.stats();
    let bodies = batch_bodies(&mut inst, &reqs);
    assert_eq!(inst.stats().batches, stats.batches + 1, "the requests ran as one batch");
    assert_eq!(bodies, ["0", "deep", "0", "deep", "0", "0"]);
    // Nor does a request served alone after a batch.
    assert_eq!(text(&inst.call(&reqs[0]).unwrap()), "0");
    // A longer request first: the batch's shorter ones start where it ended.
    let bodies = batch_bodies(&mut inst, &[marked(200), reqs[0].clone(), reqs[0].clone()]);
    assert_eq!(bodies, ["deep", "0", "0"]);
    // A batch that ends with a longer request than it started with, then a request alone.
    assert_eq!(batch_bodies(&mut inst, &[reqs[0].clone(), marked(200)]), ["0", "deep"]);
    assert_eq!(text(&inst.call(&reqs[0]).unwrap()), "0");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn batched_probe_requests_answer_as_on_a_fresh_vm() {
    require_kvm();
    // Not a test of time limits: at the default 1 s a probe request timed out at load 10 (the
    // mutation campaign's run N counted five mutants "caught" that way).
    let t = tenant("isolate", |c| c.timeout = Duration::from_secs(20));
    let mut batched = t.instance().unwrap();
    // What a new instance of the snapshot answers, per request: never an instance that served
    // earlier requests itself (a leak both reset paths share would leave both answers equal).
    let mut fresh: HashMap<(Vec<u8>, Vec<u8>), String> = HashMap::new();
    for seed in 1..=6u64 {
        let reqs = probe_requests(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 40);
        let got = batch_bodies(&mut batched, &reqs);
        for (i, r) in reqs.iter().enumerate() {
            let want = fresh
                .entry((r.query.clone(), r.body.clone()))
                .or_insert_with(|| text(&t.instance().unwrap().call(r).unwrap()));
            assert_eq!(&got[i], want, "seed {seed}, request {i}: {:?}", r.body);
        }
    }
    let s = batched.stats();
    eprintln!("probe batches: {} calls, {} reset in the guest, {} by the host", s.calls, s.guest_resets, s.resets);
    assert!(s.guest_resets >= s.calls / 4, "a good share of the probe requests must be reset in the guest: {s:?}");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn requests_too_large_to_be_staged_together_run_apart() {
    // A batch stages its requests side by side in an area as large as the request area
    // (`pack`): three requests of 40% of it each do not fit together, so at most two are
    // staged at a time, and every one comes back whole.
    require_kvm();
    let t = tenant("echo", |c| c.timeout = Duration::from_secs(20));
    let mut inst = t.instance().unwrap();
    let big = |b: u8| Request { method: b"POST".to_vec(), body: vec![b; 400 << 10], ..req("/") };
    let results = inst.call_batch(&[big(b'a'), big(b'b'), big(b'c')]);
    assert_eq!(results.len(), 3);
    for (r, b) in results.iter().zip([b'a', b'b', b'c']) {
        let body = &r.as_ref().expect("call failed").response.body;
        assert!(body.len() == 400 << 10 && body.iter().all(|&x| x == b), "request {:?} came back wrong", b as char);
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_budget_left_over_cuts_nothing_and_a_spent_one_still_serves() {
    // The parts of call_batch_within that do not depend on how fast the host is (the test
    // above, which does, is left out of mutation runs on a loaded host): a budget of an hour
    // serves every request of several batches; an expired one serves at least one.  (A
    // generous time limit per request: not a test of limits.)
    require_kvm();
    let t = tenant("hello", |c| c.timeout = Duration::from_secs(20));
    let mut inst = t.instance().unwrap();
    let reqs = vec![req("/"); 70];
    let all = inst.call_batch_within(&reqs, Some(Duration::from_secs(3600)));
    assert_eq!(all.len(), 70, "an hour's budget cut a batch of 70 hello requests");
    assert!(all.iter().all(|r| r.as_ref().map(text).as_deref() == Ok("Hello World!")));
    let spent = inst.call_batch_within(&reqs, Some(Duration::ZERO));
    assert!((1..=70).contains(&spent.len()), "an expired budget served {} requests", spent.len());
    assert_eq!(inst.stats().calls, 70 + spent.len() as u64);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_spent_budget_ends_a_batch_after_the_request_that_runs() {
    // Counted, not timed: with a budget already spent, the host's look at the batch as it
    // starts (and every 200 us after) finds request 0 running and ends the batch after it:
    // request 0 is answered and reset by the guest kernel, the other two do not run.  (A
    // generous limit per request: not a test of limits.)
    require_kvm();
    let (before, done, after) = or_hung("a batch with a spent budget", || {
        let t = tenant("misbehave", |c| c.timeout = Duration::from_secs(20));
        let mut inst = t.instance().unwrap();
        let before = inst.stats();
        let done = inst.call_batch_within(&vec![req("/busy?ms=50"); 3], Some(Duration::ZERO));
        (before, done, inst.stats())
    });
    assert_eq!(done.len(), 1, "a spent budget let {} of 3 requests run: {done:?}", done.len());
    let first = done[0].as_ref().expect("the request that ran failed");
    assert_eq!(text(first), "ok");
    // Reset once, by the guest kernel; or by the host where the request itself left the
    // guest (under the emulated-CPU rig /busy's clock reads are host calls, and the host
    // then finishes the request).
    let counts = |s: &vmm::InstanceStats| (s.calls, s.errors, s.batches, s.guest_resets + s.resets);
    let (c0, e0, b0, resets0) = counts(&before);
    assert_eq!(counts(&after), (c0 + 1, e0, b0 + 1, resets0 + 1), "{after:?}");
    if after.host_syscalls == before.host_syscalls {
        assert_eq!(after.guest_resets, before.guest_resets + 1, "{after:?}");
    }
    // The batch's exits (at least the look and the batch's end) are the last request's.
    let exits = after.exits - before.exits;
    assert!(exits >= 2, "{exits} exits");
    assert_eq!((first.exits, after.last_call_exits), (exits, exits));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_budget_stops_a_batch_between_requests() {
    require_kvm();
    let t = tenant("misbehave", |c| c.timeout = Duration::from_millis(500));
    let mut inst = t.instance().unwrap();
    let reqs = vec![req("/busy?ms=20"); 8];
    let done = inst.call_batch_within(&reqs, Some(Duration::from_millis(30)));
    assert!((1..8).contains(&done.len()), "a 30 ms budget serves some of eight 20 ms requests, not {}", done.len());
    assert!(done.iter().all(|r| r.as_ref().map(text).as_deref() == Ok("ok")));
    assert_eq!(inst.stats().calls, done.len() as u64);
    // An expired budget still serves one request, and the instance goes on normally.
    assert_eq!(inst.call_batch_within(&reqs, Some(Duration::ZERO)).len(), 1);
    assert_eq!(batch_bodies(&mut inst, &vec![req("/count"); 5]), vec!["1"; 5]);
}

/// Makes ioctl `request` fail with EPERM on this thread from now on (a seccomp filter, which
/// stays with the thread): a host failure on demand, where KVM itself would not fail.
fn fail_ioctl_on_this_thread(request: u64) {
    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};
    let on = SeccompCondition::new(1, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, request).unwrap();
    let rules = [(libc::SYS_ioctl, vec![SeccompRule::new(vec![on]).unwrap()])].into_iter().collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        seccompiler::TargetArch::x86_64,
    )
    .unwrap();
    seccompiler::apply_filter(&seccompiler::BpfProgram::try_from(filter).unwrap()).unwrap();
}

/// A KVM ioctl's number: `_IOC(dir, KVMIO, nr, sizeof(T))` (dir 1: write, 2: read).
fn kvm_ioctl<T>(dir: u64, nr: u64) -> u64 {
    dir << 30 | (std::mem::size_of::<T>() as u64) << 16 | 0xae << 8 | nr
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_host_failure_in_a_batch_fails_the_rest_of_it_and_poisons_the_instance() {
    // Request 1 of five is finished by the host, which then fails: either its reset (reading
    // the dirty log) or the restart of the guest kernel before request 2 (after a fault, it
    // first asks KVM for events still to be delivered).  Requests 0 and 1 keep their results;
    // the three after fail as host errors, each counted once, and the instance serves
    // nothing more.
    require_kvm();
    let cases = [
        ("/sleep?ms=1", kvm_ioctl::<kvm_bindings::kvm_dirty_log>(1, 0x42), "KVM_GET_DIRTY_LOG"),
        ("/fault", kvm_ioctl::<kvm_bindings::kvm_vcpu_events>(2, 0x9f), "KVM_GET_VCPU_EVENTS"),
    ];
    for (second, ioctl, name) in cases {
        std::thread::spawn(move || {
            let t = tenant("misbehave", |c| c.timeout = Duration::from_secs(20));
            let mut inst = t.instance().unwrap();
            fail_ioctl_on_this_thread(ioctl);
            let reqs = [req("/count"), req(second), req("/count"), req("/count"), req("/count")];
            let results = inst.call_batch(&reqs);
            assert_eq!(results.len(), 5, "{name}: {results:?}");
            assert_eq!(text(results[0].as_ref().unwrap()), "1", "{name}");
            for r in &results[2..] {
                assert!(matches!(&r.as_ref().unwrap_err().kind, Failure::Host(_)), "{name}: {r:?}");
            }
            assert!(!inst.usable(), "{name}");
            let s = inst.stats();
            // /sleep's own result is its response; /fault's, its fault.
            let errors = if second == "/fault" { 4 } else { 3 };
            assert_eq!((s.batches, s.calls, s.errors), (1, 5, errors), "{name}: {s:?}");
            assert!(matches!(inst.call(&req("/count")).unwrap_err().kind, Failure::Host(_)), "{name}");
        })
        .join()
        .unwrap();
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_demotion_in_a_batch_reprotects_only_the_hot_pages_left_as_the_snapshot_has_them() {
    // Every 256 in-guest resets (VB_DEMOTE_EVERY) the hot pages are looked at again.  One the
    // last request changed is still being written: it stays hot (re-protecting it cost, under
    // PVM, a trapped page-table write, an invlpg, TLB flushes and a write fault in each of the
    // next two requests: for the CPython hello's ~118 hot pages ~40% of its CPU time per
    // batched request).  One left as the snapshot has it is re-protected, so that a page no
    // longer written stops being copied back.
    require_kvm();
    let mut inst = tenant("misbehave", |c| c.timeout = Duration::from_secs(20)).instance().unwrap();
    let dirty = |kb: u32| req(&format!("/dirty?kb={kb}"));
    let per_reset = |inst: &mut Instance, kb: u32| {
        let before = inst.stats();
        assert!(batch_bodies(inst, &vec![dirty(kb); 32]).iter().all(|b| b == "ok"));
        let after = inst.stats();
        let resets = after.guest_resets - before.guest_resets;
        assert_eq!(resets, 32, "every request of the batch reset in the guest");
        (after.guest_pages_restored - before.guest_pages_restored) as f64 / resets as f64
    };
    let quiet = per_reset(&mut inst, 0);
    // 16 pages written by every request over 544 resets, across two demotions.
    let before = inst.stats();
    let busy: Vec<f64> = (0..17).map(|_| per_reset(&mut inst, 64)).collect();
    let reprotected = inst.stats().guest_pages_reprotected - before.guest_pages_reprotected;
    assert!(busy[16] >= quiet + 16.0, "16 pages written by every request are copied back: {quiet} then {busy:?}");
    // Re-protected once, by the reset after the first request that wrote them (they are hot
    // from the second on); clearing them at each demotion too would make it 16 + 2 * 16 more.
    assert!(reprotected < 32, "{reprotected} pages re-protected in 544 resets of requests writing the same 16");
    // No longer written: copied back until the next demotion finds them as the snapshot has
    // them, then left alone.
    let after: Vec<f64> = (0..9).map(|_| per_reset(&mut inst, 0)).collect();
    assert!(after[8] <= quiet + 1.0, "pages no longer written are still copied back: {quiet}, then {after:?}");
    assert_eq!(batch_bodies(&mut inst, &vec![req("/count"); 4]), vec!["1"; 4]);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn hot_pages_are_restored_across_demotions_in_a_batch() {
    // Requests that change the same memory (hot pages) over 544 in-guest resets, across two
    // demotions (every 256): each must find the memory as the snapshot has it, including the
    // one right after a demotion, which decides by comparing a hot page with the snapshot
    // whether it still needs copying back.
    require_kvm();
    let t = tenant("isolate", |c| c.timeout = Duration::from_secs(20));
    let mut inst = t.instance().unwrap();
    // Global array, heap block and stack area: 8 bytes each (isolate.c's op format).
    let mut body = Vec::new();
    for kind in [1u8, 2, 5] {
        body.extend_from_slice(&[kind, 0, 1, 8]);
        body.extend_from_slice(b"changed!");
    }
    let probe =
        Request { method: b"POST".to_vec(), path: b"/".to_vec(), query: b"mem".to_vec(), body, ..Default::default() };
    let want = text(&t.instance().unwrap().call(&probe).unwrap());
    let before = inst.stats().guest_resets;
    for round in 0..17 {
        let got = batch_bodies(&mut inst, &vec![probe.clone(); 32]);
        assert!(got.iter().all(|g| *g == want), "round {round}: {got:?}, a fresh VM answers {want}");
    }
    assert!(inst.stats().guest_resets - before >= 520, "the requests were reset in the guest");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn hot_pages_written_back_to_the_same_bytes_are_hot_again_at_once_after_a_demotion() {
    // A page a request writes without changing it (CPython's reference counts, up and down
    // again) looks quiet at a demotion and is re-protected; written again by the next request,
    // it is hot again at once, not after two more re-protections (each a trapped page-table
    // write, an invlpg, TLB flushes and a write fault under PVM).
    require_kvm();
    let mut inst = tenant("misbehave", |c| c.timeout = Duration::from_secs(20)).instance().unwrap();
    let rewrite = req("/rewrite?kb=64");
    assert_eq!(batch_bodies(&mut inst, &vec![rewrite.clone(); 32]), vec!["ok"; 32]);
    let before = inst.stats();
    for _ in 0..17 {
        assert_eq!(batch_bodies(&mut inst, &vec![rewrite.clone(); 32]), vec!["ok"; 32]);
    }
    let after = inst.stats();
    let resets = after.guest_resets - before.guest_resets;
    let reprotected = after.guest_pages_reprotected - before.guest_pages_reprotected;
    // Demotions every 256 resets: two or three in 544, each re-protecting the 16 pages once.
    let demotions = resets / 256 + 1;
    assert!(
        reprotected <= 16 * demotions + 4,
        "{reprotected} pages re-protected in {resets} resets of requests rewriting the same 16"
    );
}
