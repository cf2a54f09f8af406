//! Debugging aid: `cargo run --example vmrun -- PROGRAM [ARGS...]` runs a program in a VM and
//! prints how it ended, its output and its system-call counts.
use std::io::Read;

fn main() {
    let args: Vec<Vec<u8>> = std::env::args().skip(1).map(String::into_bytes).collect();
    let program = vmm::Program::from_file(String::from_utf8_lossy(&args[0]).as_ref()).expect("program");
    let mut cfg = vmm::RunConfig::new(args);
    if let Ok(mb) = std::env::var("MEM_MB") {
        cfg.memory = mb.parse::<u64>().unwrap() << 20;
    }
    if std::env::var("STDIN").is_ok() {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data).unwrap();
        cfg.stdin = vmm::Input::Bytes { data, pos: 0 };
    }
    cfg.timeout = std::time::Duration::from_secs(5);
    let out = vmm::run(&program, cfg).expect("run");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("-- exit {:?} exits {} elapsed {:?} oom {}", out.exit, out.exits, out.elapsed, out.memory_exhausted);
    eprintln!("-- handled {:?}", out.syscalls.handled);
    eprintln!("-- unsupported {:?}", out.syscalls.unsupported);
}
