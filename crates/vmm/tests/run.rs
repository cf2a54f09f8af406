//! One-shot runs of real static programs (glibc, musl, Rust) in a VM.

mod common;

use common::{app, args, kvm_or_skip};
use vmm::program::ExitKind;
use vmm::RunConfig;

fn run(name: &str, argv: &[&str]) -> vmm::RunOutcome {
    let mut a = vec![name];
    a.extend_from_slice(argv);
    vmm::run(&app(name), RunConfig::new(args(&a))).unwrap()
}

#[test]
fn hello_from_every_toolchain() {
    if !kvm_or_skip() {
        return;
    }
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
