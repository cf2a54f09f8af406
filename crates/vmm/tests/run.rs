//! One-shot runs of real static programs (glibc, musl, Rust) in a VM.

mod common;

use common::{app, args, require_kvm};
use vmm::ExitKind;
use vmm::RunConfig;

fn run(name: &str, argv: &[&str]) -> vmm::RunOutcome {
    let mut a = vec![name];
    a.extend_from_slice(argv);
    vmm::run(&app(name), RunConfig::new(args(&a))).unwrap()
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn hello_from_every_toolchain() {
    require_kvm();
    for (name, expected) in [
        ("hello.glibc", &b"Hello, world!\n"[..]),
        ("hello.musl", b"Hello, world!\n"),
        ("hello.glibc-pie", b"Hello, world!\n"),
        ("hello.rust", b"Hello, world from Rust!\n"),
    ] {
        let out = run(name, &[]);
        assert_eq!(out.exit, ExitKind::Exited(0), "{name}: stderr {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, expected, "{name}");
    }
}

fn run_cfg(name: &str, argv: &[&str], f: impl FnOnce(&mut RunConfig)) -> vmm::RunOutcome {
    let mut a = vec![name];
    a.extend_from_slice(argv);
    let mut cfg = RunConfig::new(args(&a));
    f(&mut cfg);
    vmm::run(&app(name), cfg).unwrap()
}

fn stdout_lines(out: &vmm::RunOutcome) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn argv_env_and_auxv_reach_the_program() {
    require_kvm();
    for name in ["showenv.glibc", "showenv.musl"] {
        let out = run_cfg(name, &["one", "two words", "ünï"], |c| c.env = args(&["A=1", "EMPTY=", "PATH=/bin"]));
        assert_eq!(out.exit, ExitKind::Exited(0));
        let lines = stdout_lines(&out);
        let has = |l: &str| lines.iter().any(|x| x == l);
        assert!(has("argc=4"), "{lines:?}");
        assert!(has("argv[2]=two words") && has("argv[3]=ünï"));
        assert!(has("env=A=1") && has("env=EMPTY=") && has("env=PATH=/bin"));
        assert!(has("auxv 6 4096 0x1000 AT_PAGESZ"));
        assert!(has("AT_PLATFORM=x86_64"));
        assert!(has(&format!("AT_EXECFN={name}")));
        let random = lines.iter().find_map(|l| l.strip_prefix("AT_RANDOM=")).unwrap().to_string();
        assert_eq!(random.len(), 32);
        assert_ne!(random, "0".repeat(32));
        let again = stdout_lines(&run_cfg(name, &[], |_| {}));
        assert!(!again.iter().any(|l| l == &format!("AT_RANDOM={random}")), "AT_RANDOM must differ between runs");
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn exit_codes_are_reported() {
    require_kvm();
    for code in [0, 1, 42, 255] {
        let out = run_cfg("exitcode.musl", &[&code.to_string()], |_| {});
        assert_eq!(out.exit, ExitKind::Exited(code));
    }
    assert_eq!(run_cfg("exitcode.glibc", &["group", "17"], |_| {}).exit, ExitKind::Exited(17));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn stdin_round_trips_binary_data() {
    require_kvm();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for name in ["cat.glibc", "cat.musl"] {
        let out = run_cfg(name, &[], |c| c.stdin = vmm::Input::Bytes { data: data.clone(), pos: 0 });
        assert_eq!(out.exit, ExitKind::Exited(0));
        assert!(out.stdout == data, "{name}: {} bytes back", out.stdout.len());
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn allocates_and_frees_100_mb_in_pieces() {
    require_kvm();
    for name in ["alloc.glibc", "alloc.musl"] {
        // This checks that the allocations work, not how fast: under the emulated CPU of the
        // TCG rig on a loaded host they have taken more than the default 10 s.
        let out = run_cfg(name, &[], |c| {
            c.memory = 256 << 20;
            c.timeout = std::time::Duration::from_secs(120);
        });
        assert_eq!(out.exit, ExitKind::Exited(0), "{name}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(out.stdout.starts_with(b"alloc ok "));
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn infinite_loop_stops_at_the_time_limit() {
    require_kvm();
    let out = run_cfg("loop.glibc", &[], |c| c.timeout = std::time::Duration::from_millis(300));
    assert_eq!(out.exit, ExitKind::Timeout);
    assert!(out.elapsed >= std::time::Duration::from_millis(300));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn time_limits_take_no_standard_signal_from_the_host_process() {
    // Deadlines interrupt KVM_RUN with a real-time signal of their own (timer.rs): a handler
    // on a standard one would take it from the embedder (`tenantvm serve` reloads on SIGHUP).
    // Rust's runtime has handlers on SIGSEGV and SIGBUS (its stack-overflow guard); every
    // other standard signal must keep the default action or be ignored.
    require_kvm();
    let out = run_cfg("loop.glibc", &[], |c| c.timeout = std::time::Duration::from_millis(100));
    assert_eq!(out.exit, ExitKind::Timeout);
    for sig in 1..32 {
        if [libc::SIGSEGV, libc::SIGBUS, libc::SIGKILL, libc::SIGSTOP].contains(&sig) {
            continue;
        }
        // SAFETY: reads the disposition of `sig` into a zeroed sigaction; changes nothing.
        let handler = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut old), 0, "signal {sig}");
            old.sa_sigaction
        };
        assert!(
            handler == libc::SIG_DFL || handler == libc::SIG_IGN,
            "signal {sig} has a handler after a run with a time limit"
        );
    }
}

/// The POSIX timers of this process that signal thread `tid`, as (kernel timer id, whether
/// it is armed), from /proc/self/timers.
fn timers_of_thread(tid: i64) -> Vec<(i64, bool)> {
    let text = std::fs::read_to_string("/proc/self/timers").expect("/proc/self/timers");
    let mut out = Vec::new();
    for timer in text.split("ID: ").skip(1) {
        let id: i64 = timer.lines().next().unwrap().trim().parse().unwrap();
        if !timer.lines().any(|l| l.starts_with("notify:") && l.trim_end().ends_with(&format!(".{tid}"))) {
            continue;
        }
        // SAFETY: timer_gettime with a kernel timer id of this process writes one itimerspec
        // into a zeroed local (a valid value of the type).
        let (ret, spec) = unsafe {
            let mut spec: libc::itimerspec = std::mem::zeroed();
            (libc::syscall(libc::SYS_timer_gettime, id, &mut spec), spec)
        };
        assert_eq!(ret, 0, "timer_gettime({id})");
        out.push((id, spec.it_value.tv_sec != 0 || spec.it_value.tv_nsec != 0));
    }
    out
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_run_leaves_no_timer_armed_and_its_thread_none_behind() {
    // A run that ends before its time limit disarms the limit's timer: its signal arriving
    // later would interrupt the embedder's own system calls on that thread (the handler has
    // no SA_RESTART).  A thread that ran guests deletes its timers when it exits (threads of
    // a pool come and go).  timer.rs; the timers are read from /proc/self/timers.
    require_kvm();
    let tid = std::thread::spawn(|| {
        let out = run_cfg("hello.glibc", &[], |c| c.timeout = std::time::Duration::from_secs(30));
        assert_eq!(out.exit, ExitKind::Exited(0));
        // SAFETY: gettid has no preconditions.
        let tid = i64::from(unsafe { libc::gettid() });
        let timers = timers_of_thread(tid);
        assert!(!timers.is_empty(), "no timer of thread {tid} in /proc/self/timers");
        assert!(timers.iter().all(|&(_, armed)| !armed), "armed after the run: {timers:?}");
        tid
    })
    .join()
    .unwrap();
    assert_eq!(timers_of_thread(tid), [], "the timers of exited thread {tid} are still there");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn faults_are_typed() {
    use vmm::GuestFault;
    require_kvm();
    let fault = |name: &str, argv: &[&str]| match run_cfg(name, argv, |_| {}).exit {
        ExitKind::Fault(f) => f,
        other => panic!("{name}: expected a fault, got {other:?}"),
    };
    let image = app("nullwrite.glibc").image().clone();
    match fault("nullwrite.glibc", &[]) {
        GuestFault::PageFault { address: 0, access: "write", rip, .. } => {
            assert!(rip >= image.start && rip < image.end)
        }
        f => panic!("{f:?}"),
    }
    assert!(matches!(fault("illegal.musl", &[]), GuestFault::InvalidOpcode { .. }));
    assert!(matches!(fault("divzero.glibc", &[]), GuestFault::DivideError { .. }));
    for name in ["stackoverflow.glibc", "stackoverflow.musl"] {
        assert!(matches!(fault(name, &[]), GuestFault::PageFault { access: "write", .. }), "{name}");
    }
    for insn in ["hlt", "cli", "in", "out", "wrmsr", "lgdt", "mov-cr3"] {
        assert!(matches!(fault("fault_gp.glibc", &[insn]), GuestFault::GeneralProtection { .. }), "{insn}");
    }
    assert!(matches!(fault("fault_gp.musl", &["int3"]), GuestFault::Exception { vector: 3, .. }));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn memory_cap_is_enforced() {
    require_kvm();
    // Mappings cost address space only (as with Linux's overcommit): malloc goes on
    // succeeding, and the first page the VM's memory cannot give ends the run as out of
    // memory, as an OOM kill would end it (no signal handler runs).
    for name in ["memhog.musl", "memhog.glibc"] {
        let out = run_cfg(name, &[], |c| c.memory = 32 << 20);
        assert!(
            matches!(out.exit, ExitKind::Fault(vmm::GuestFault::PageFault { access: "write", .. })),
            "{name}: {:?}",
            out.exit
        );
        assert!(out.memory_exhausted && out.out_of_memory(), "{name}");
    }
}

#[test]
fn garbage_is_refused_before_any_vm_exists() {
    use vmm::ElfError;
    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(0x9e37_79b9) >> 7) as u8).collect();
    assert!(matches!(vmm::Program::from_bytes(random), Err(vmm::Error::InvalidProgram(ElfError::NotElf))));
    let hello = std::fs::read(common::apps_dir().join("hello.glibc")).unwrap();
    assert!(matches!(vmm::Program::from_bytes(hello[..100].to_vec()), Err(vmm::Error::InvalidProgram(_))));
    assert!(matches!(vmm::Program::from_bytes(Vec::new()), Err(vmm::Error::InvalidProgram(ElfError::NotElf))));
}
