//! Probe: why a call after a pause costs more than a call back to back (docs/platform.md).
//!
//! `cargo run --release --example coldcall -p tenantvm-vmm -- apps/build/hello [PAUSE_US...]`
//!
//! For each pause (default 0, 1000, 10000 µs of busy-spinning, then of sleeping), it times, each
//! after the same pause, alternating:
//! - `host`: host-only work of a similar footprint (copy 64 KiB, one system call);
//! - `kvm-run-empty`: one `KVM_RUN` that returns at once (`immediate_exit`) on a bare VM:
//!   the ioctl and vCPU load/put, no guest code;
//! - `call`: one ephemeral tenant call (one guest entry, one exit, the reset), with the KVM
//!   statistics of its vCPU (binary stats fd) that moved during the call.
//!
//! The pause is what the thread does in between (spin, sleep), on a fixed CPU when `PIN=1`.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;

fn pause(kind: &str, us: u64) {
    if us == 0 {
        return;
    }
    let d = Duration::from_micros(us);
    if kind == "sleep" {
        std::thread::sleep(d);
    } else {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }
}

/// A vCPU's binary statistics (KVM_GET_STATS_FD): names and a way to read all values.
struct Stats {
    fd: OwnedFd,
    names: Vec<String>,
    offsets: Vec<(u64, u32)>, // (byte offset of the value, number of u64s)
    data_offset: u64,
}

#[repr(C)]
struct Header {
    flags: u32,
    name_size: u32,
    num_desc: u32,
    id_offset: u32,
    desc_offset: u32,
    data_offset: u32,
}

fn pread(fd: i32, buf: &mut [u8], off: u64) {
    // SAFETY: reading into a live buffer of the given length.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as i64) };
    assert_eq!(n as usize, buf.len(), "pread of the stats fd");
}

impl Stats {
    fn open(vcpu_fd: i32) -> Option<Stats> {
        // KVM_GET_STATS_FD = _IO(KVMIO, 0xce)
        // SAFETY: an ioctl without argument on a vCPU fd of this process; returns a new fd.
        let fd = unsafe { libc::ioctl(vcpu_fd, 0xaece_u64 as _) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut h = [0u8; std::mem::size_of::<Header>()];
        pread(fd.as_raw_fd(), &mut h, 0);
        // SAFETY: Header is plain u32 fields; the buffer has its size.
        let h: Header = unsafe { std::ptr::read_unaligned(h.as_ptr().cast()) };
        let _ = h.flags;
        let _ = h.id_offset;
        let desc_size = 16 + h.name_size as usize; // flags, exponent, size, offset, bucket_size, then the name
        let mut descs = vec![0u8; desc_size * h.num_desc as usize];
        pread(fd.as_raw_fd(), &mut descs, h.desc_offset as u64);
        let mut names = Vec::new();
        let mut offsets = Vec::new();
        for d in descs.chunks(desc_size) {
            // struct kvm_stats_desc { __u32 flags; __s16 exponent; __u16 size; __u32 offset;
            //   __u32 bucket_size; char name[]; }  (16 bytes, then the name)
            let size = u16::from_le_bytes([d[6], d[7]]) as u32;
            let offset = u32::from_le_bytes([d[8], d[9], d[10], d[11]]) as u64;
            let name = &d[16..16 + h.name_size as usize];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            names.push(String::from_utf8_lossy(&name[..end]).into_owned());
            offsets.push((offset, size));
        }
        Some(Stats { fd, names, offsets, data_offset: h.data_offset as u64 })
    }

    fn read(&self) -> Vec<u64> {
        self.offsets
            .iter()
            .map(|&(off, size)| {
                let mut b = [0u8; 8];
                if size >= 1 {
                    pread(self.fd.as_raw_fd(), &mut b, self.data_offset + off);
                }
                u64::from_le_bytes(b)
            })
            .collect()
    }
}

/// The vCPU fds of this process (anon_inode:kvm-vcpu:N), newest last.
fn vcpu_fds() -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = fs::read_link(e.path()) {
            if target.to_string_lossy().starts_with("anon_inode:kvm-vcpu") {
                out.push(e.file_name().to_string_lossy().parse::<i32>().unwrap());
            }
        }
    }
    out.sort();
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pauses: Vec<u64> =
        if args.len() > 1 { args[1..].iter().map(|s| s.parse().unwrap()).collect() } else { vec![0, 1000, 10000] };
    if std::env::var("PIN").as_deref() == Ok("1") {
        // SAFETY: a cpu_set_t for CPU 1 applied to this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(1, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);

    // A bare VM for the empty KVM_RUN.
    let kvm = Kvm::new().expect("kvm");
    let vm = kvm.create_vm().expect("vm");
    let mut bare = vm.create_vcpu(0).expect("vcpu");

    let program = vmm::Program::from_file(&args[0]).expect("program");
    let mut cfg = vmm::TenantConfig::new(vec![args[0].clone().into_bytes()]);
    cfg.ephemeral = true;
    let tenant = vmm::Tenant::boot(&program, cfg).expect("boot");
    let mut inst = tenant.instance().expect("instance");
    let vcpu = *vcpu_fds().last().expect("the instance's vCPU fd");
    let stats = Stats::open(vcpu);
    let req = vmm::Request { method: b"GET".to_vec(), path: b"/".to_vec(), ..Default::default() };
    for _ in 0..200 {
        inst.call(&req).expect("call");
    }
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: a timer with no notification (never fires: disarmed before its time).
    unsafe {
        let mut sev: libc::sigevent = std::mem::zeroed();
        sev.sigev_notify = libc::SIGEV_NONE;
        assert_eq!(libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer), 0);
    }
    let src = vec![1u8; 64 << 10];
    let mut dst = vec![0u8; 64 << 10];

    println!("pin={} rounds={rounds}", std::env::var("PIN").unwrap_or_default());
    for kind in ["spin", "sleep"] {
        for &us in &pauses {
            if kind == "sleep" && us == 0 {
                continue;
            }
            let (mut host, mut empty, mut call, mut call2, mut reset) = (vec![], vec![], vec![], vec![], vec![]);
            let (mut sys, mut warm_host) = (vec![], vec![]);
            let mut moved: Vec<u64> = vec![0; stats.as_ref().map_or(0, |s| s.names.len())];
            for _ in 0..rounds {
                pause(kind, us);
                let t = Instant::now();
                dst.copy_from_slice(&src);
                // SAFETY: a system call without arguments.
                unsafe { libc::getppid() };
                host.push(t.elapsed().as_secs_f64() * 1e6);
                std::hint::black_box(&dst);

                // The host system calls a call makes besides KVM_RUN: arm and disarm the
                // deadline timer, read the thread's CPU clock, draw entropy.
                pause(kind, us);
                let t = Instant::now();
                let spec = libc::itimerspec {
                    it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
                    it_value: libc::timespec { tv_sec: 1, tv_nsec: 0 },
                };
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                let mut rnd = [0u8; 64];
                // SAFETY: our own timer; valid pointers to locals.
                unsafe {
                    libc::timer_settime(timer, 0, &spec, std::ptr::null_mut());
                    libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
                    libc::getrandom(rnd.as_mut_ptr().cast(), rnd.len(), 0);
                    libc::timer_settime(timer, 0, &std::mem::zeroed(), std::ptr::null_mut());
                }
                sys.push(t.elapsed().as_secs_f64() * 1e6);

                // The same host work after a pause that keeps it warm: the pause re-reads the
                // buffers every 250 µs (is it our data being evicted, or time itself?).
                let end = Instant::now() + Duration::from_micros(us);
                while Instant::now() < end {
                    dst.copy_from_slice(&src);
                    std::hint::black_box(&dst);
                    pause("spin", us.min(250));
                }
                let t = Instant::now();
                dst.copy_from_slice(&src);
                // SAFETY: a system call without arguments.
                unsafe { libc::getppid() };
                warm_host.push(t.elapsed().as_secs_f64() * 1e6);

                pause(kind, us);
                bare.set_kvm_immediate_exit(1);
                let t = Instant::now();
                let _ = bare.run();
                empty.push(t.elapsed().as_secs_f64() * 1e6);
                bare.set_kvm_immediate_exit(0);

                pause(kind, us);
                let before = stats.as_ref().map(Stats::read);
                let t = Instant::now();
                inst.call(&req).expect("call");
                call.push(t.elapsed().as_secs_f64() * 1e6);
                if let (Some(s), Some(b)) = (&stats, before) {
                    for (m, (a, b)) in moved.iter_mut().zip(s.read().iter().zip(b)) {
                        *m += a - b;
                    }
                }
                reset.push(inst.stats().last_reset.duration.as_secs_f64() * 1e6);
                let t = Instant::now();
                inst.call(&req).expect("call");
                call2.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let mut moved_s = String::new();
            if let Some(s) = &stats {
                for (name, m) in s.names.iter().zip(&moved) {
                    if *m > 0 {
                        moved_s += &format!(" {name}={:.1}", *m as f64 / rounds as f64);
                    }
                }
            }
            println!(
                "{kind:5} {us:6} us | host {:5.1} (kept warm {:5.1}) | syscalls {:5.1} | kvm-run-empty {:5.1} | call {:6.1} (reset {:5.1}) then again {:6.1} | per call:{moved_s}",
                median(host),
                median(warm_host),
                median(sys),
                median(empty),
                median(call),
                median(reset),
                median(call2)
            );
        }
    }
}
