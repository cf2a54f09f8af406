//! Threads: `clone` for POSIX threads on the VM's one vCPU, futexes between them, time
//! slices, deadlock detection, the thread cap, and threads in a tenant's snapshot.

mod common;

use std::time::Duration;

use common::{app, apps_dir, args, require_kvm};
use vmm::{ExitKind, Failure, Request, RunConfig};

fn run(name: &str, mode: &str) -> vmm::RunOutcome {
    let program = app(name);
    let mut cfg = RunConfig::new(args(&[name, mode]));
    // glibc gives every thread an 8 MiB stack (RLIMIT_STACK) out of the VM's memory.
    cfg.memory = 256 << 20;
    // Generous: this is about behaviour, and test machines are busy.
    cfg.timeout = Duration::from_secs(60);
    vmm::run(&program, cfg).unwrap()
}

fn stdout(out: &vmm::RunOutcome) -> String {
    assert_eq!(out.exit, ExitKind::Exited(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// 8 workers x 50 rounds, each adding (id + 1) * (round + 1) in strict turn order.
const POOL: &str = "sum=45900 turns=400 rets=280 distinct=1 main=1\n";

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn eight_pthreads_with_mutex_and_condvar_compute_the_known_sum() {
    require_kvm();
    for libc in ["threads.glibc", "threads.musl"] {
        let out = run(libc, "pool");
        assert_eq!(stdout(&out), POOL, "{libc}");
        assert!(out.syscalls.unsupported.is_empty(), "{libc}: {:?}", out.syscalls.unsupported);
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn dynamically_linked_pthreads_work() {
    require_kvm();
    if !std::path::Path::new("/lib64/ld-linux-x86-64.so.2").exists() {
        eprintln!("SKIPPED (not run, although reported ok): no dynamic linker on this host");
        return;
    }
    let path = apps_dir().join("threads.dyn");
    let program = vmm::Program::from_file(&path).unwrap();
    let mut cfg = RunConfig::new(args(&[path.to_str().unwrap(), "pool"]));
    cfg.memory = 256 << 20;
    cfg.timeout = Duration::from_secs(60);
    assert_eq!(stdout(&vmm::run(&program, cfg).unwrap()), POOL);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_spinning_thread_is_preempted_and_its_registers_survive() {
    require_kvm();
    // Main spins without a system call until the other thread sets a flag: only a time
    // slice can move the vCPU.  The other thread sleeps first, so main is resumed from a
    // system-call exit although it was stopped in user mode (rcx, r11 and xmm0 checked).
    for libc in ["threads.glibc", "threads.musl"] {
        let out = run(libc, "preempt");
        assert_eq!(stdout(&out), "spun until the other thread ran: registers intact\n", "{libc}");
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn threads_that_all_wait_forever_are_a_deadlock() {
    require_kvm();
    let out = run("threads.glibc", "deadlock");
    assert!(matches!(out.exit, ExitKind::Deadlock(_)), "{:?}", out.exit);
    assert!(out.elapsed < Duration::from_secs(60), "stopped at once, not at the time limit");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn threads_beyond_the_cap_are_eagain() {
    require_kvm();
    assert_eq!(stdout(&run("threads.glibc", "many")), "created=63 err=EAGAIN\n");
}

fn request(path: &str) -> Request {
    Request { method: b"GET".to_vec(), path: path.as_bytes().to_vec(), ..Default::default() }
}

fn body(inst: &mut vmm::Instance, path: &str) -> String {
    String::from_utf8(inst.call(&request(path)).unwrap().response.body).unwrap()
}

fn thread_tenant(ephemeral: bool) -> vmm::Tenant {
    common::tenant("thread_tenant", |c| {
        c.ephemeral = ephemeral;
        c.memory = 128 << 20;
        c.timeout = Duration::from_secs(20);
    })
}

/// Job k (counted since boot) adds k + 1: the first request's 4 jobs sum to 10.  Tids: main
/// 2, workers 3-6, the request's thread 7.
const FIRST: &str = "sum=10 jobs=4 left=-1 new=7";

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_tenant_with_threads_is_reset_with_its_threads() {
    require_kvm();
    let t = thread_tenant(true);
    let mut inst = t.instance().unwrap();
    for _ in 0..5 {
        // The thread the last request started is gone, and the same tid is handed out again.
        assert_eq!(body(&mut inst, "/"), FIRST);
    }
    // The new thread's `gettid` (new=7) was answered by the guest kernel, with the id the
    // host published when it switched to that thread: no exit for it.
    let host = inst.stats().host_syscalls;
    assert!(!host.contains_key(&(libc::SYS_gettid as u64)), "gettid left the guest: {host:?}");
    // A request that deadlocks fails typed, and the instance serves on from the snapshot.
    let err = inst.call(&request("/deadlock")).unwrap_err();
    assert!(matches!(err.kind, Failure::Deadlock { .. }), "{:?}", err.kind);
    assert_eq!(body(&mut inst, "/"), FIRST);
    // Batched requests see the same.
    for r in inst.call_batch(&[request("/"), request("/"), request("/")]) {
        assert_eq!(String::from_utf8(r.unwrap().response.body).unwrap(), FIRST);
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_stateful_tenant_keeps_its_threads() {
    require_kvm();
    let mut inst = thread_tenant(false).instance().unwrap();
    assert_eq!(body(&mut inst, "/"), FIRST);
    // The job count and the thread the first request started survive.
    assert_eq!(body(&mut inst, "/"), "sum=26 jobs=8 left=0 new=8");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn rust_std_threads_and_channels() {
    require_kvm();
    let out = run("threads.rust", "");
    assert_eq!(stdout(&out), "squares=338350 jobs=100 scoped=500500\n");
    assert!(out.syscalls.unsupported.is_empty(), "{:?}", out.syscalls.unsupported);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn epoll_and_poll_wait_for_other_threads() {
    require_kvm();
    // A 1 ms wait times out with 0 events while the writer sleeps 3 ms; a long wait ends with
    // the writer's byte (and its data); one-shot is reported once until re-armed; poll on a
    // pipe's write end asks for input only: nothing, after its 2 ms.
    for libc in ["threads.glibc", "threads.musl"] {
        let out = run(libc, "epoll");
        assert_eq!(stdout(&out), "epoll: eexist=1 timeout=0 woken=1 data=feed oneshot=0 rearmed=1 poll=0\n", "{libc}");
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_static_go_program_runs_its_goroutines_and_recovers_a_nil_dereference() {
    require_kvm();
    let path = apps_dir().join("goroutines.go");
    if !path.exists() {
        assert!(!common::strict(), "{} missing: install golang-go (make setup)", path.display());
        eprintln!("SKIPPED (not run, although reported ok): no Go toolchain built {}", path.display());
        return;
    }
    let program = vmm::Program::from_file(&path).unwrap();
    let mut cfg = RunConfig::new(args(&["goroutines"]));
    // Go reserves over 512 MiB of address space (page summaries, heap arenas) before it runs
    // anything: reservations cost address space only, so a small VM is enough.
    cfg.memory = 16 << 20;
    cfg.timeout = Duration::from_secs(60);
    let out = vmm::run(&program, cfg).unwrap();
    // The nil dereference is Go's SIGSEGV handler turning the fault into a panic.
    assert_eq!(
        stdout(&out),
        "total=407989 goroutines=16 procs=4 timer=true\n\
         recovered: runtime error: invalid memory address or nil pointer dereference\n"
    );
    assert!(out.syscalls.unsupported.is_empty(), "{:?}", out.syscalls.unsupported);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn threads_switch_on_a_seccomp_restricted_thread() {
    require_kvm();
    // Switching threads saves and loads XSAVE state and segment bases with KVM ioctls: the
    // filter of a server's vCPU threads must allow them.
    let t = thread_tenant(true);
    std::thread::spawn(move || {
        vmm::sandbox::restrict_current_thread().unwrap();
        let mut inst = t.instance().unwrap();
        assert_eq!(body(&mut inst, "/"), FIRST);
        assert_eq!(body(&mut inst, "/"), FIRST);
    })
    .join()
    .unwrap();
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn timerfds_wake_readers_and_pollers_alone_and_between_threads() {
    require_kvm();
    // A blocking read, epoll and poll with no timeout on a periodic timer (alone: the host
    // sleeps until the expiry), EAGAIN when non-blocking and unarmed, and a thread whose
    // epoll_wait only the timer ends while main waits in pthread_join.
    for libc in ["threads.glibc", "threads.musl"] {
        let out = run(libc, "timerfd");
        assert_eq!(
            stdout(&out),
            "timerfd: interval=2ms read=8 ticks>=1:1 epoll=1 poll=1 eagain=1 threaded=1\n",
            "{libc}"
        );
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_socketpair_connects_threads_and_there_is_no_network() {
    require_kvm();
    // MSG_DONTWAIT on an empty socket, epoll waiting for the other thread's send, recvmsg,
    // an answer back, S_ISSOCK, EOF once the peer is closed, EPIPE writing to it, and
    // socket(AF_INET) refused.
    for libc in ["threads.glibc", "threads.musl"] {
        let out = run(libc, "socket");
        assert_eq!(
            stdout(&out),
            "socket: dontwait=1 ready=1 got=4:ping ponged=1 sock=1 eof=0 epipe=1 nonet=1\n",
            "{libc}"
        );
    }
}
