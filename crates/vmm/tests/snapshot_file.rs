//! Snapshot files: a tenant written to a file and started from it serves as the booted one;
//! every damaged, foreign or mismatched file is refused with a typed error, never run.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{require_kvm, tenant};
use vmm::{Request, SnapshotFileError, Tenant};

fn get(path: &str) -> Request {
    Request { method: b"GET".to_vec(), path: path.as_bytes().to_vec(), ..Default::default() }
}

fn body(inst: &mut vmm::Instance, req: &Request) -> Vec<u8> {
    inst.call(req).unwrap().response.body
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tenantvm-snapfile-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Header fields (little-endian u64 after the 16-byte magic): format, state length, state CRC,
/// RAM offset, RAM size, RAM CRC, file size, three reserved (0); the header's CRC in its last
/// 8 bytes.  The RAM runs to the end of the file.
const HEADER_LEN: usize = 128;

fn field(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[16 + 8 * i..24 + 8 * i].try_into().unwrap())
}

fn set_field(b: &mut [u8], i: usize, v: u64) {
    b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
}

fn seal_header(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[..HEADER_LEN - 8]);
    b[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&u64::from(crc).to_le_bytes());
}

fn load(path: &Path) -> Result<Tenant, SnapshotFileError> {
    Tenant::from_snapshot_file(path, None)
}

/// What a load gave, short (a tenant's Debug is the whole snapshot).
fn shown(r: Result<Tenant, SnapshotFileError>) -> Result<&'static str, SnapshotFileError> {
    r.map(|_| "a tenant")
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_tenant_started_from_its_file_serves_like_the_booted_one() {
    require_kvm();
    let dir = scratch("serve");
    for (name, ephemeral, want) in [
        ("hello", true, vec![b"Hello World!".to_vec(); 3]),
        ("state", true, vec![b"1".to_vec(); 3]),
        ("state", false, vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]),
    ] {
        let booted = tenant(name, |c| c.ephemeral = ephemeral);
        let path = dir.join(format!("{name}-{ephemeral}.snap"));
        booted.write_snapshot_file(&path).unwrap();
        let started = Instant::now();
        let loaded = load(&path).unwrap();
        let mut inst = loaded.instance().unwrap();
        let ready = started.elapsed();
        let got: Vec<Vec<u8>> = (0..3).map(|_| body(&mut inst, &get("/"))).collect();
        assert_eq!(got, want, "{name} (ephemeral: {ephemeral})");
        // Two instances of the loaded tenant do not see each other's writes.
        if !ephemeral {
            let mut other = loaded.instance().unwrap();
            assert_eq!(body(&mut other, &get("/")), b"1");
        }
        assert_eq!(loaded.snapshot().boot_time(), booted.snapshot().boot_time());
        eprintln!(
            "{name}: booted in {:.2} ms, ready from its file in {:.2} ms (file {} KiB on disk)",
            booted.snapshot().boot_time().as_secs_f64() * 1e3,
            ready.as_secs_f64() * 1e3,
            std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) / 2).unwrap_or(0)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn damaged_foreign_and_mismatched_files_are_refused() {
    require_kvm();
    let dir = scratch("damage");
    let good = dir.join("good.snap");
    tenant("hello", |c| c.memory = 16 << 20).write_snapshot_file(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.join("bad.snap");
    let try_bytes = |b: &[u8]| {
        std::fs::write(&bad, b).unwrap();
        load(&bad)
    };
    let (state_len, ram_offset) = (field(&bytes, 1) as usize, field(&bytes, 3) as usize);
    // A data page of RAM: the first one that is not all zeros.
    let data_page =
        (ram_offset..bytes.len()).step_by(4096).find(|&o| bytes[o..o + 4096].iter().any(|&b| b != 0)).unwrap();
    let ram_end = ram_offset + field(&bytes, 4) as usize;
    let hole_page =
        (ram_offset..ram_end).step_by(4096).rev().find(|&o| bytes[o..o + 4096].iter().all(|&b| b == 0)).unwrap();
    // The last page of the file (of RAM).
    let last_page = bytes.len() - 4096;
    assert_eq!(ram_end, bytes.len());

    // Bit flips: header (magic, fields, reserved words, CRC), state, RAM data, holes of RAM.
    let flips = [0, 20, 40, 64, HEADER_LEN - 1, HEADER_LEN + 3, HEADER_LEN + state_len / 2, HEADER_LEN + state_len - 1]
        .into_iter()
        .chain([88, data_page + 100, data_page + 4095, hole_page + 7, last_page + 2000]);
    for at in flips {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        match shown(try_bytes(&b)) {
            Err(SnapshotFileError::NotASnapshot { .. }) => assert!(at < 16, "flip at {at}"),
            Err(SnapshotFileError::Version { .. }) => assert!((16..24).contains(&at), "flip at {at}"),
            Err(SnapshotFileError::Corrupt { what, .. }) => assert!(!what.is_empty()),
            Err(SnapshotFileError::Truncated { .. }) => assert!((64..72).contains(&at), "flip at {at}"),
            other => panic!("a bit flipped at {at} of {} was not refused: {other:?}", bytes.len()),
        }
    }

    // Truncations, anywhere.
    for len in
        [0, 10, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + state_len - 1, ram_offset, data_page + 1, bytes.len() - 1]
    {
        match shown(try_bytes(&bytes[..len])) {
            Err(SnapshotFileError::NotASnapshot { .. }) => assert!(len < HEADER_LEN),
            Err(SnapshotFileError::Truncated { expected, actual, .. }) => {
                assert_eq!((expected, actual), (bytes.len() as u64, len as u64));
            }
            other => panic!("truncated to {len} bytes: {other:?}"),
        }
    }
    // And a longer file is not the file either.
    assert!(matches!(try_bytes(&[bytes.as_slice(), b"x"].concat()), Err(SnapshotFileError::Truncated { .. })));

    // A reserved header word that is not zero (header CRC made to match): Corrupt.
    let mut b = bytes.clone();
    set_field(&mut b, 8, 1);
    seal_header(&mut b);
    assert!(matches!(try_bytes(&b), Err(SnapshotFileError::Corrupt { .. })));

    // Another format (header CRC made to match): Version.
    let mut b = bytes.clone();
    let format = field(&b, 0);
    set_field(&mut b, 0, format + 1);
    seal_header(&mut b);
    assert!(matches!(try_bytes(&b), Err(SnapshotFileError::Version { .. })));
    // Formats before (2, which held no threads; 4, which held a copy of the restore view):
    // Version, saying which.
    for old in [2, 4] {
        let mut b = bytes.clone();
        set_field(&mut b, 0, old);
        seal_header(&mut b);
        match shown(try_bytes(&b)) {
            Err(e @ SnapshotFileError::Version { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("format {old}")) && text.contains(&format!("format {format}")),
                    "{text}"
                );
            }
            other => panic!("a format-{old} file: {other:?}"),
        }
    }

    // Another tenantvm build (its id in the state, every CRC made to match): Version, naming it.
    let mut b = bytes.clone();
    let state = &mut b[HEADER_LEN..HEADER_LEN + state_len];
    let at = state.windows(9).position(|w| w == b"tenantvm ").unwrap();
    state[at + 9] = b'9';
    let crc = crc32fast::hash(state);
    set_field(&mut b, 2, u64::from(crc));
    seal_header(&mut b);
    match shown(try_bytes(&b)) {
        Err(SnapshotFileError::Version { found, expected, .. }) => {
            assert!(found.contains("tenantvm 9"), "{found}");
            assert_ne!(found, expected);
        }
        other => panic!("another build's file: {other:?}"),
    }

    // Foreign files: a program, text, nothing.
    let elf = std::fs::read(common::apps_dir().join("hello")).unwrap();
    for foreign in [elf.as_slice(), b"not a snapshot at all".as_slice(), &[0u8; 4096]] {
        assert!(matches!(try_bytes(foreign), Err(SnapshotFileError::NotASnapshot { .. })));
    }
    assert!(matches!(load(&dir.join("missing")), Err(SnapshotFileError::Io { .. })));

    // The good file still loads (the damage was all in copies).
    load(&good).unwrap().instance().unwrap();
    // The errors read well.
    let e = try_bytes(&bytes[..HEADER_LEN + 5]).unwrap_err().to_string();
    assert!(e.contains("truncated") && e.contains("bad.snap"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The pthread tenant (a pool of 4 workers waiting on a condition variable at its snapshot).
fn thread_tenant(ephemeral: bool) -> Tenant {
    thread_tenant_in(ephemeral, 128 << 20)
}

/// The thread tenant with `memory` bytes of RAM: the file holds all of it, and every load
/// checksums it, so tests that load a file many times keep it small (under the emulated
/// AMD-V CPU a load of 128 MiB takes seconds).
fn thread_tenant_in(ephemeral: bool, memory: u64) -> Tenant {
    tenant("thread_tenant", |c| {
        c.ephemeral = ephemeral;
        c.memory = memory;
        c.timeout = std::time::Duration::from_secs(20);
    })
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_tenant_with_threads_started_from_its_file_serves_like_the_booted_one() {
    require_kvm();
    let dir = scratch("threads");
    for ephemeral in [true, false] {
        let booted = thread_tenant(ephemeral);
        let path = dir.join(format!("threads-{ephemeral}.snap"));
        booted.write_snapshot_file(&path).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.snapshot().proc().threads.count(), booted.snapshot().proc().threads.count());
        let (mut a, mut b) = (booted.instance().unwrap(), loaded.instance().unwrap());
        // Requests hand jobs to the workers (futex waits and wakes), start a thread, and see
        // whether the last request's thread is still there (stateful: it is).
        let paths = ["/", "/", "/deadlock", "/", "/"];
        for p in paths {
            let (x, y) = (a.call(&get(p)), b.call(&get(p)));
            match (x, y) {
                (Ok(x), Ok(y)) => assert_eq!(
                    String::from_utf8_lossy(&y.response.body),
                    String::from_utf8_lossy(&x.response.body),
                    "{p} (ephemeral: {ephemeral})"
                ),
                (Err(x), Err(y)) => assert_eq!(format!("{:?}", y.kind), format!("{:?}", x.kind), "{p}"),
                (x, y) => panic!("{p}: booted {x:?}, from the file {y:?}"),
            }
        }
        // Batched requests too.
        let batch = [get("/"), get("/"), get("/")];
        let bodies = |i: &mut vmm::Instance| -> Vec<Vec<u8>> {
            i.call_batch(&batch).into_iter().map(|r| r.unwrap().response.body).collect()
        };
        assert_eq!(bodies(&mut b), bodies(&mut a), "batch (ephemeral: {ephemeral})");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn damage_to_the_threads_of_a_file_is_refused() {
    require_kvm();
    let dir = scratch("threads-damage");
    let good = dir.join("good.snap");
    thread_tenant_in(true, 48 << 20).write_snapshot_file(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.join("bad.snap");
    let state_len = field(&bytes, 1) as usize;
    // The threads are the state's last part: each of the 4 waiting workers carries its 4 KiB
    // XSAVE image, so the last 4 x 4 KiB of the state are theirs.
    let threads = HEADER_LEN + state_len - 4 * 4096;
    // Six flips spread over the four images (each flip means two full loads).
    for at in (threads..HEADER_LEN + state_len).step_by(2731) {
        let mut b = bytes.clone();
        b[at] ^= 0x04;
        std::fs::write(&bad, &b).unwrap();
        match shown(load(&bad)) {
            Err(SnapshotFileError::Corrupt { what, .. }) => assert!(what.contains("checksum"), "{what}"),
            other => panic!("a bit flipped at {at} in the threads was not refused: {other:?}"),
        }
        // Made to pass the checksum, the flip either still reads as a table the scheduler can
        // run (a changed register: the VM contains what it does) or is refused as out of shape;
        // loading never panics.
        let crc = crc32fast::hash(&b[HEADER_LEN..HEADER_LEN + state_len]);
        set_field(&mut b, 2, u64::from(crc));
        seal_header(&mut b);
        std::fs::write(&bad, &b).unwrap();
        match shown(load(&bad)) {
            Ok(_) | Err(SnapshotFileError::Corrupt { .. }) => {}
            other => panic!("flip at {at}, resealed: {other:?}"),
        }
    }
    for len in [threads, threads + 4096, HEADER_LEN + state_len - 1] {
        std::fs::write(&bad, &bytes[..len]).unwrap();
        assert!(matches!(load(&bad), Err(SnapshotFileError::Truncated { .. })), "cut at {len}");
    }
    // The state cut short inside the threads, its length and checksums made to match (the
    // rest left as padding before the RAM): out of shape, never misread.
    for cut in [threads, threads + 2048, HEADER_LEN + state_len - 8] {
        let mut b = bytes.clone();
        set_field(&mut b, 1, (cut - HEADER_LEN) as u64);
        let crc = crc32fast::hash(&b[HEADER_LEN..cut]);
        set_field(&mut b, 2, u64::from(crc));
        seal_header(&mut b);
        std::fs::write(&bad, &b).unwrap();
        match shown(load(&bad)) {
            Err(SnapshotFileError::Corrupt { what, .. }) => assert!(what.contains("out of shape"), "{what}"),
            other => panic!("the state cut at {cut}: {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether loading read the file's RAM whole (rather than trusting this
/// process's earlier check of the same, unchanged file); the steps say which.
fn checked_whole(t: &Tenant) -> bool {
    let names: Vec<&str> = t.snapshot().load_steps().unwrap().as_slice().iter().map(|s| s.0).collect();
    let (whole, trusted) = (names.contains(&"RAM: checksum"), names.iter().any(|n| n.contains("verified before")));
    assert_ne!(whole, trusted, "{names:?}");
    whole
}

/// Seconds since the file's status last changed.
fn ctime_age(path: &Path) -> f64 {
    let m = std::fs::metadata(path).unwrap();
    let ctime = std::time::UNIX_EPOCH + std::time::Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
    std::time::SystemTime::now().duration_since(ctime).map_or(0.0, |d| d.as_secs_f64())
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_file_checked_once_is_checked_whole_again_after_any_change() {
    require_kvm();
    let dir = scratch("verified-once");
    let path = dir.join("hello.snap");
    tenant("hello", |c| c.memory = 16 << 20).write_snapshot_file(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let ram_offset = field(&bytes, 3) as usize;
    let data_page =
        (ram_offset..bytes.len()).step_by(4096).find(|&o| bytes[o..o + 4096].iter().any(|&b| b != 0)).unwrap();

    // A file changed within the last second is checked whole on every load: a write in the
    // same clock tick as the last could leave its times as they were.  (Observable only when
    // the first load ended within that second; a slow host skips it.)
    assert!(checked_whole(&load(&path).unwrap()));
    if ctime_age(&path) < 1.0 {
        assert!(checked_whole(&load(&path).unwrap()), "a file younger than a second was trusted");
    } else {
        eprintln!("the first load took over a second: not checking that a young file is not remembered");
    }
    let settle = |path: &Path| std::thread::sleep(std::time::Duration::from_secs_f64((1.1 - ctime_age(path)).max(0.0)));
    settle(&path);
    assert!(checked_whole(&load(&path).unwrap()), "a settled file not seen before");
    assert!(!checked_whole(&load(&path).unwrap()), "a settled, unchanged file checked before");

    // Damaged in place (same file, same size): refused, not trusted.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[bytes[data_page + 100] ^ 0x20], (data_page + 100) as u64).unwrap();
    match shown(load(&path)) {
        Err(SnapshotFileError::Corrupt { what, .. }) => assert!(what.contains("RAM"), "{what}"),
        other => panic!("a file damaged after it was checked: {other:?}"),
    }
    // Repaired in place: checked whole again, and loads.
    file.write_all_at(&bytes[data_page + 100..data_page + 101], (data_page + 100) as u64).unwrap();
    assert!(checked_whole(&load(&path).unwrap()));
    settle(&path);
    assert!(checked_whole(&load(&path).unwrap()));
    assert!(!checked_whole(&load(&path).unwrap()));
    // Only its modification time changed (touched): checked whole again.
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).unwrap();
    assert!(checked_whole(&load(&path).unwrap()));
    drop(file);
    // Replaced by a damaged copy (renamed over it): refused.
    settle(&path);
    assert!(checked_whole(&load(&path).unwrap()));
    let mut b = bytes.clone();
    b[data_page + 7] ^= 0x01;
    let tmp = dir.join("hello.snap.new");
    std::fs::write(&tmp, &b).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(matches!(load(&path), Err(SnapshotFileError::Corrupt { .. })), "a damaged file renamed over a checked one");
    std::fs::remove_dir_all(&dir).unwrap();
}
