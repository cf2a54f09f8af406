//! Rust's std::thread and channels inside tenantvm (crates/vmm/tests/threads.rs): a pipeline
//! of 4 worker threads fed through one channel and answering through another, a scoped
//! thread, and a shared counter behind Arc<Mutex>.  Prints a known result.
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

fn main() {
    let (jobs_tx, jobs_rx) = mpsc::channel::<u64>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let (out_tx, out_rx) = mpsc::channel::<(usize, u64)>();
    let counter = Arc::new(Mutex::new(0u64));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (rx, tx, counter) = (jobs_rx.clone(), out_tx.clone(), counter.clone());
            thread::spawn(move || loop {
                let job = rx.lock().unwrap().recv();
                let Ok(n) = job else { break };
                *counter.lock().unwrap() += 1;
                tx.send((w, n * n)).unwrap();
            })
        })
        .collect();
    drop(out_tx);
    for n in 1..=100 {
        jobs_tx.send(n).unwrap();
    }
    drop(jobs_tx);
    let total: u64 = out_rx.iter().map(|(_, sq)| sq).sum();
    for w in workers {
        w.join().unwrap();
    }
    let halves = thread::scope(|s| {
        let a = s.spawn(|| (1..=500u64).sum::<u64>());
        let b = s.spawn(|| (501..=1000u64).sum::<u64>());
        a.join().unwrap() + b.join().unwrap()
    });
    println!("squares={total} jobs={} scoped={halves}", counter.lock().unwrap());
}
