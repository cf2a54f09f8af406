//! Linux programs as they ship: dynamic linking, the file-system view, file system calls,
//! and the per-request reset of all the file state.

mod common;

use std::path::{Path, PathBuf};

use common::{app, apps_dir, args, require_kvm};
use vmm::ExitKind;
use vmm::{Request, RunConfig};

fn run_with(prog: &Path, argv: &[&str], f: impl FnOnce(&mut RunConfig)) -> vmm::RunOutcome {
    let program = vmm::Program::from_file(prog).unwrap();
    let mut a = vec![prog.to_str().unwrap()];
    a.extend_from_slice(argv);
    let mut cfg = RunConfig::new(args(&a));
    cfg.memory = 128 << 20;
    f(&mut cfg);
    vmm::run(&program, cfg).unwrap()
}

fn ok(out: &vmm::RunOutcome) -> String {
    assert_eq!(out.exit, ExitKind::Exited(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A scratch tree outside /tmp (the guest's /tmp is its own): allowed/{a.txt, link-out ->
/// ../secret.txt, abs-out -> <abs secret>}, secret.txt beside it.
fn scratch(name: &str) -> PathBuf {
    // The build tree, unless the checkout itself is where the guest has its own files (CI may
    // clone under /tmp): then /var/tmp.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guest_owned = ["/tmp", "/dev", "/proc", "/sys"].iter().any(|r| manifest.starts_with(r));
    let base = if guest_owned { PathBuf::from("/var/tmp/tenantvm-tests") } else { manifest.join("../../target") };
    let dir = base.join("linux-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("allowed")).unwrap();
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::write(dir.join("allowed/a.txt"), b"allowed content").unwrap();
    std::fs::write(dir.join("secret.txt"), b"TOP SECRET").unwrap();
    std::os::unix::fs::symlink("../secret.txt", dir.join("allowed/link-out")).unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("allowed/abs-out")).unwrap();
    dir
}

/// Whether the host has glibc's dynamic linker.  The hardware-KVM rig's guest (busybox, no
/// shared libraries) has none: there the dynamic-linking tests cannot run, and say so; they
/// run in `make test`'s host pass (and in tests/test_linux_files.py).
fn has_ld_so() -> bool {
    let present = Path::new("/lib64/ld-linux-x86-64.so.2").exists();
    if !present {
        eprintln!("SKIPPED (not run, although reported ok): no /lib64/ld-linux-x86-64.so.2 on this host");
    }
    present
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn dynamic_c_hello_runs_with_its_interpreter() {
    require_kvm();
    if !has_ld_so() {
        return;
    }
    let out = run_with(&apps_dir().join("hello.dyn"), &[], |_| {});
    assert_eq!(ok(&out), "Hello, world!\n");
    assert!(out.syscalls.unsupported.is_empty(), "{:?}", out.syscalls.unsupported);
}

/// A one-shot run maps the program's read-only pages from its file (slot 4) instead of
/// copying them: they read as the file, system calls read them, and they stay read-only.
#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_programs_read_only_pages_are_its_file_and_stay_read_only() {
    require_kvm();
    if !has_ld_so() {
        return;
    }
    let out = run_with(&apps_dir().join("churn.dyn"), &["image"], |_| {});
    assert!(ok(&out).starts_with("image ok "), "{}", String::from_utf8_lossy(&out.stdout));
    // The same program from bytes (no file to map) sees the same.
    let path = std::fs::canonicalize(apps_dir().join("churn.dyn")).unwrap();
    let program = vmm::Program::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    let mut cfg = RunConfig::new(args(&["churn", "image"]));
    cfg.memory = 64 << 20;
    cfg.fs.allow_read.push(path.clone());
    cfg.exe_path = Some(path.to_str().unwrap().as_bytes().to_vec());
    let copied = vmm::run(&program, cfg).unwrap();
    assert_eq!(ok(&copied), ok(&out));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn dynamic_rust_hello_runs() {
    require_kvm();
    if !has_ld_so() {
        return;
    }
    let out = run_with(&apps_dir().join("hello.rust-dyn"), &[], |_| {});
    assert_eq!(ok(&out), "Hello, world from Rust!\n");
    assert!(out.syscalls.unsupported.is_empty(), "{:?}", out.syscalls.unsupported);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn dynamic_cpp_throws_and_catches() {
    require_kvm();
    if !has_ld_so() {
        return;
    }
    let out = run_with(&apps_dir().join("exception.dyncpp"), &[], |_| {});
    assert_eq!(ok(&out), "ok=30\ntoo big: 3=1\ntoo big: 4=1\n");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn bin_true_runs() {
    require_kvm();
    if !has_ld_so() || !Path::new("/bin/true").exists() {
        return;
    }
    assert_eq!(run_with(Path::new("/bin/true"), &[], |_| {}).exit, ExitKind::Exited(0));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn file_calls_answer_as_linux_does() {
    require_kvm();
    let dir = scratch("calls");
    let a = dir.join("allowed/a.txt");
    let a = a.to_str().unwrap();
    let out = run_with(
        &apps_dir().join("fsops.glibc"),
        &[
            "read",
            a,
            "read",
            "/app/a.txt",
            "write",
            a,
            "x",
            "write",
            "/app/new",
            "x",
            "write",
            "/usr/lib/new",
            "x",
            "access",
            a,
            "w",
            "write",
            "/tmp/f",
            "hello",
            "append",
            "/tmp/f",
            "!",
            "read",
            "/tmp/f",
            "stat",
            "/tmp/f",
            "mkdir",
            "/tmp/d",
            "mkdir",
            "/tmp/d",
            "rename",
            "/tmp/f",
            "/tmp/d/g",
            "ls",
            "/tmp/d",
            "rmdir",
            "/tmp/d",
            "unlink",
            "/tmp/d/g",
            "rmdir",
            "/tmp/d",
            "chdir",
            "/tmp",
            "cwd",
            "read",
            "/dev/null",
            "stat",
            "/dev/zero",
            "readlink",
            "/proc/self/exe",
            "read",
            "/sys/devices/system/cpu/online",
            "pipe",
            "eventfd",
            "dup",
            "mmap",
            a,
            "seek",
            a,
            "ls",
            "/dev",
        ],
        |c| {
            c.fs.allow_read.push(dir.join("allowed"));
            c.fs.mounts.push((dir.join("allowed"), "/app".into()));
        },
    );
    let text = ok(&out);
    let exe = apps_dir().join("fsops.glibc");
    let expected = [
        format!("read {a} = allowed content"),
        "read /app/a.txt = allowed content".into(),
        format!("write {a} = -30"),
        "write /app/new = -30".into(),
        "write /usr/lib/new = -2".into(),
        format!("access {a} = -30"),
        "write /tmp/f = 5".into(),
        "append /tmp/f = 1".into(),
        "read /tmp/f = hello!".into(),
        "stat /tmp/f = file 6".into(),
        "mkdir /tmp/d = 0".into(),
        "mkdir /tmp/d = -17".into(),
        "rename /tmp/f = 0".into(),
        "ls /tmp/d = g".into(),
        "rmdir /tmp/d = -39".into(),
        "unlink /tmp/d/g = 0".into(),
        "rmdir /tmp/d = 0".into(),
        "chdir /tmp = 0".into(),
        "cwd read = /tmp".into(),
        "read /dev/null = ".into(),
        "stat /dev/zero = chr 0".into(),
        format!("readlink /proc/self/exe = {}", exe.display()),
        "read /sys/devices/system/cpu/online = 0.".into(),
        "pipe eventfd = 4 4 ping eof=0".into(),
        "eventfd dup = 7 -11".into(),
        "dup mmap = 3 100 101 50 cloexec=0,1".into(),
        format!("mmap {a} = allowed content. shared_rw=-13"),
        format!("seek {a} = 15 1 l pipe=-29"),
        "ls /dev = null random urandom zero".into(),
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, expected, "\n{text}");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn escapes_and_secrets_are_refused_with_linux_errnos() {
    require_kvm();
    let dir = scratch("escapes");
    let allowed = dir.join("allowed");
    let al = allowed.to_str().unwrap();
    let secret = dir.join("secret.txt");
    let up = format!("{al}/../secret.txt");
    let link_out = format!("{al}/link-out");
    let abs_out = format!("{al}/abs-out");
    let deep = format!("/app/../../../../{}", secret.display());
    let paths = [
        secret.to_str().unwrap(),
        &up,
        &link_out,
        &abs_out,
        "/app/link-out",
        &deep,
        "/proc/self/root/etc/passwd",
        "/proc/self/fd/0",
        "/proc/1/root/etc/passwd",
        "/etc/passwd",
        "/etc/shadow",
    ];
    let mut argv = Vec::new();
    for p in &paths {
        argv.extend(["read", *p]);
    }
    let out = run_with(&apps_dir().join("fsops.glibc"), &argv, |c| {
        c.fs.allow_read.push(allowed.clone());
        c.fs.mounts.push((allowed.clone(), "/app".into()));
    });
    let text = ok(&out);
    assert!(!text.contains("SECRET"), "{text}");
    for (line, p) in text.lines().zip(paths) {
        assert_eq!(line, format!("read {p} = -2"), "ENOENT, as for a path that does not exist");
    }
    assert_eq!(text.lines().count(), paths.len());
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn descriptor_exhaustion_is_emfile_and_tmp_is_bounded() {
    require_kvm();
    let big = "x".repeat(60_000);
    let out = run_with(
        &apps_dir().join("fsops.glibc"),
        &["write", "/tmp/a", &big, "write", "/tmp/b", &big, "leak", "/dev/null", "5000"],
        |c| c.fs.tmp_bytes = 100_000,
    );
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "write /tmp/a = 60000");
    assert_eq!(lines[1], "write /tmp/b = -28", "ENOSPC past the /tmp limit");
    assert_eq!(lines[2], "leak /dev/null = 1021 -24", "EMFILE at 1024 descriptors");
}

fn probe_tenant(name: &str, ephemeral: bool) -> vmm::Tenant {
    let dir = scratch(name);
    let kept = dir.join("allowed/a.txt");
    let mut cfg = vmm::TenantConfig::new(args(&["fsprobe", kept.to_str().unwrap()]));
    cfg.ephemeral = ephemeral;
    // A generous limit: this is about state, not speed, and test machines are busy.
    cfg.timeout = std::time::Duration::from_secs(10);
    cfg.fs.allow_read.push(dir.join("allowed"));
    vmm::Tenant::boot(&app("fsprobe"), cfg).unwrap()
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn reset_restores_fds_cwd_tmp_offsets_and_pipes() {
    require_kvm();
    let t = probe_tenant("probe-eph", true);
    let mut inst = t.instance().unwrap();
    let req = Request { method: b"GET".to_vec(), path: b"/".to_vec(), ..Default::default() };
    let first = String::from_utf8(inst.call(&req).unwrap().response.body).unwrap();
    assert_eq!(first, "fds=6 cwd=/tmp/initdir tmp=init.txt,initdir, kept=4:allo pipe=1:x");
    for _ in 0..3 {
        let again = String::from_utf8(inst.call(&req).unwrap().response.body).unwrap();
        assert_eq!(again, first, "every request starts from the snapshot's files");
    }
    // A stateful tenant keeps them: the second request sees the first one's changes.
    let mut st = probe_tenant("probe-st", false).instance().unwrap();
    let one = String::from_utf8(st.call(&req).unwrap().response.body).unwrap();
    let two = String::from_utf8(st.call(&req).unwrap().response.body).unwrap();
    assert_eq!(one, first);
    assert_eq!(two, "fds=9 cwd=/ tmp=initdir,request.txt, kept=4:wed  pipe=-1:");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn repeated_dynamic_runs_keep_no_host_descriptors() {
    require_kvm();
    if !has_ld_so() {
        return;
    }
    let runs: usize = std::env::var("TENANTVM_LEAK_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(100).min(300);
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let hello = apps_dir().join("hello.dyn");
    run_with(&hello, &[], |_| {});
    let before = fds();
    for _ in 0..runs {
        let out = run_with(&hello, &[], |_| {});
        assert_eq!(out.stdout, b"Hello, world!\n");
    }
    // Other tests run in parallel threads of this process: allow their few descriptors.
    assert!(fds() <= before + 16, "{before} descriptors before {runs} runs, {} after", fds());
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_seccomp_restricted_thread_reads_init_files_but_opens_no_new_host_file() {
    require_kvm();
    let t = probe_tenant("probe-seccomp", true);
    let open = Request { method: b"GET".to_vec(), path: b"/open".to_vec(), ..Default::default() };
    let mut free = t.instance().unwrap();
    assert_eq!(String::from_utf8(free.call(&open).unwrap().response.body).unwrap(), "reopen=0 kept=4:allo");
    std::thread::spawn(move || {
        vmm::sandbox::restrict_current_thread().unwrap();
        let mut inst = t.instance().unwrap();
        let body = String::from_utf8(inst.call(&open).unwrap().response.body).unwrap();
        assert_eq!(body, "reopen=-13 kept=4:allo", "EACCES from the filter, the init-opened file still readable");
    })
    .join()
    .unwrap();
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn tmp_counts_against_the_memory_cap() {
    require_kvm();
    let run = |args: &[&str]| {
        run_with(&apps_dir().join("fsops.glibc"), args, |c| {
            c.memory = 32 << 20;
            c.fs.tmp_bytes = 256 << 20;
            // Touching ~90 MiB takes seconds under the hardware-KVM rig's emulated CPU; the
            // time limit is not what this test is about.
            c.timeout = std::time::Duration::from_secs(120);
        })
    };
    // 16 MiB of /tmp leave no room for 20 MiB more in a 32 MiB VM: touching them is out of
    // memory (memory is taken when touched, as with Linux's overcommit).
    let out = run(&["fill", "/tmp/a", "16", "alloc", "20"]);
    assert!(out.memory_exhausted && out.out_of_memory(), "{:?}", out.exit);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("fill /tmp/a = 16 0\n"));
    let out = run(&["fill", "/tmp/a", "16", "unlink", "/tmp/a", "alloc", "20", "fill", "/tmp/b", "64"]);
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "fill /tmp/a = 16 0");
    assert_eq!(lines[1], "unlink /tmp/a = 0");
    assert_eq!(lines[2], "alloc 20 = 0", "deleting the file gives the memory back");
    let (mb, err) = lines[3].strip_prefix("fill /tmp/b = ").unwrap().split_once(' ').unwrap();
    assert!(mb.parse::<u32>().unwrap() < 32, "{text}");
    assert_eq!(err, "-28", "ENOSPC when /tmp would take memory the VM does not have");
}
