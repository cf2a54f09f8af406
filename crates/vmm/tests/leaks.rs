//! Thousands of runs in one process leave no file descriptors, threads or memory behind.
//! (A test binary of its own: other tests running in parallel would change the counts.)

mod common;

use common::{app, args, require_kvm};
use vmm::RunConfig;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn many_runs_leak_nothing() {
    require_kvm();
    let hello = app("hello.musl");
    let nullwrite = app("nullwrite.musl");
    let spin = app("loop.musl");
    // Mostly clean exits, some faults, a few timeouts (the deadline timer path).
    let one = |i: usize| {
        let p = if i % 500 == 7 {
            &spin
        } else if i % 10 == 0 {
            &nullwrite
        } else {
            &hello
        };
        let mut cfg = RunConfig::new(args(&["x"]));
        cfg.memory = 8 << 20;
        cfg.timeout = std::time::Duration::from_millis(if i % 500 == 7 { 20 } else { 5000 });
        vmm::run(p, cfg).unwrap();
    };
    for i in 0..200 {
        one(i);
    }
    let (fds, rss, tasks) = (open_fds(), rss_kib(), threads());
    let runs: usize = std::env::var("TENANTVM_LEAK_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    for i in 0..runs {
        one(i);
    }
    assert_eq!(open_fds(), fds, "file descriptors leaked");
    assert_eq!(threads(), tasks, "threads leaked");
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 8 << 10, "RSS grew by {grown} KiB over {runs} runs");
}
