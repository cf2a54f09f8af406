//! Static Rust guest for tenantvm's VMM tests (built into apps/build/hello.rust).
//!
//! No arguments: prints "Hello, world from Rust!" and exits 0.
//! `hello.rust env [NAME]`: prints NAME=<value> for an environment variable
//!     (default HOME), or "NAME unset"; then the number of env entries.
//! `hello.rust hash [N]`: fills a HashMap and a growing Vec with N (default
//!     100000) items, reads them back and prints "hash ok <checksum>".
//! `hello.rust args ...`: prints each argument on its own line.
//! `hello.rust exit N`: exits with status N via std::process::exit.
//! `hello.rust panic`: panics (panic = "abort", so it dies with SIGABRT).

use std::collections::HashMap;
use std::env;
use std::io::{self, Write};
use std::process;

fn env_cmd(name: &str) {
    match env::var(name) {
        Ok(v) => println!("{name}={v}"),
        Err(_) => println!("{name} unset"),
    }
    println!("env count={}", env::vars_os().count());
}

fn hash_cmd(n: u64) {
    // HashMap uses std's RandomState, which seeds itself from getrandom.
    let mut map: HashMap<u64, u64> = HashMap::new();
    let mut vec: Vec<u64> = Vec::new(); // grows by doubling: realloc/mremap traffic
    for i in 0..n {
        let v = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i >> 3);
        map.insert(i, v);
        vec.push(v);
    }
    let mut sum: u64 = 0;
    for i in 0..n {
        let v = map[&i];
        if v != vec[i as usize] {
            eprintln!("hash mismatch at {i}");
            process::exit(1);
        }
        sum = sum.wrapping_mul(31).wrapping_add(v);
    }
    println!("hash ok n={} len={} checksum={:016x}", n, map.len(), sum);
}

fn main() {
    let args: Vec<String> = env::args().collect();
    let stdout = io::stdout();
    match args.get(1).map(String::as_str) {
        None => {
            let mut out = stdout.lock();
            writeln!(out, "Hello, world from Rust!").unwrap();
        }
        Some("env") => env_cmd(args.get(2).map(String::as_str).unwrap_or("HOME")),
        Some("hash") => hash_cmd(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000)),
        Some("args") => {
            for (i, a) in args.iter().enumerate() {
                println!("arg[{i}]={a}");
            }
        }
        Some("exit") => process::exit(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0)),
        Some("panic") => panic!("requested panic"),
        Some(other) => {
            eprintln!("hello.rust: unknown mode '{other}' (env|hash|args|exit|panic)");
            process::exit(2);
        }
    }
}
