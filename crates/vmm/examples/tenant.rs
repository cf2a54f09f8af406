//! Debugging aid: `cargo run --release --example tenant -- PROGRAM [N] [stateful]` boots a
//! tenant, serves N requests on one instance and prints timings and counters.
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let program = vmm::Program::from_file(&args[0]).expect("program");
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(10000);
    let mut cfg = vmm::TenantConfig::new(vec![args[0].clone().into_bytes()]);
    cfg.ephemeral = args.get(2).map(String::as_str) != Some("stateful");
    cfg.shared_memory = 4096;
    let t = Instant::now();
    let tenant = vmm::Tenant::boot(&program, cfg).expect("boot");
    println!("boot {:?} resident pages {}", t.elapsed(), tenant.snapshot().resident_pages());
    let t = Instant::now();
    let mut inst = tenant.instance().expect("instance");
    println!("instance {:?}", t.elapsed());
    let req = vmm::Request { method: b"GET".to_vec(), path: b"/".to_vec(), ..Default::default() };
    let r = inst.call(&req).expect("call");
    println!(
        "first: {} {:?} {:?}",
        r.response.status,
        String::from_utf8_lossy(&r.response.body),
        inst.stats().last_reset
    );
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = inst.call(&req).expect("call");
        lat.push(t.elapsed());
        assert_eq!(r.response.status, 200);
    }
    lat.sort();
    let s = inst.stats();
    println!(
        "calls {} p50 {:?} p99 {:?} | exits/call {:.2} last_call_exits {} | pages/reset {:.2} reset avg {:?} last {:?}",
        n,
        lat[n / 2],
        lat[n * 99 / 100],
        s.exits as f64 / s.calls as f64,
        s.last_call_exits,
        s.pages_restored as f64 / s.resets.max(1) as f64,
        s.reset_time / s.resets.max(1) as u32,
        s.last_reset
    );
    let r = inst.call(&req).expect("call");
    println!("last body {:?}", String::from_utf8_lossy(&r.response.body));
}
