//! Memory on demand: an address space far larger than the VM's memory, pages taken when
//! touched (crates/vmm/src/pages.rs), and the memory map reset with the tenant.

mod common;

use common::{app, args, require_kvm};
use vmm::{ExitKind, Failure, Request, RunConfig};

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn reservations_of_gigabytes_cost_no_memory_until_touched() {
    require_kvm();
    for name in ["reserve.glibc", "reserve.musl"] {
        let mut cfg = RunConfig::new(args(&[name]));
        cfg.memory = 32 << 20;
        cfg.timeout = std::time::Duration::from_secs(120);
        let out = vmm::run(&app(name), cfg).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.exit, ExitKind::Exited(0), "{name}: {text}");
        assert_eq!(text, "reserve ok\n", "{name}");
    }
}

fn get(path: &str) -> Request {
    Request { method: b"GET".to_vec(), path: path.as_bytes().to_vec(), ..Default::default() }
}

fn body(r: Result<vmm::CallResult, vmm::CallError>) -> String {
    String::from_utf8(r.map_err(|e| e.kind).unwrap().response.body).unwrap()
}

const CLEAN: &str = "R:0 P:1 B:1 X:0 Q:1";

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn the_memory_map_and_pages_taken_on_demand_are_reset_with_the_tenant() {
    require_kvm();
    let tenant = |ephemeral| {
        common::tenant("reserve_tenant", |c| {
            c.ephemeral = ephemeral;
            c.memory = 32 << 20;
            // Each /check takes two faults to the program's handler; /map touches 4 MiB: on a
            // loaded host that is more than the default limit, which is not what this tests.
            c.timeout = std::time::Duration::from_secs(30);
        })
    };
    let mut inst = tenant(true).instance().unwrap();
    for _ in 0..3 {
        assert_eq!(body(inst.call(&get("/check"))), CLEAN);
        assert_eq!(body(inst.call(&get("/map"))), "mapped");
        // What /map committed, mapped and unmapped is as it was at the snapshot again: the
        // page tables too (an access, not only the bookkeeping, says so).
        assert_eq!(body(inst.call(&get("/check"))), CLEAN);
        assert_eq!(body(inst.call(&get("/scribble"))), "scribbled");
    }
    // A batch: /scribble writes pages the pool gave before the snapshot and makes no system
    // call, so the guest kernel resets it; /map needs the host's reset.
    let reqs: Vec<Request> =
        ["/check", "/scribble", "/check", "/map", "/check", "/scribble", "/check"].iter().map(|p| get(p)).collect();
    let results: Vec<String> = inst.call_batch(&reqs).into_iter().map(body).collect();
    assert_eq!(results, [CLEAN, "scribbled", CLEAN, "mapped", CLEAN, "scribbled", CLEAN]);
    // 40 rounds of /map touch 40 x 4 MiB in a 32 MiB VM: each reset gives the pages back.
    for _ in 0..40 {
        assert_eq!(body(inst.call(&get("/map"))), "mapped");
    }
    assert_eq!(body(inst.call(&get("/check"))), CLEAN);
    // Stateful: the changes stay.
    let mut st = tenant(false).instance().unwrap();
    assert_eq!(body(st.call(&get("/map"))), "mapped");
    assert_eq!(body(st.call(&get("/check"))), "R:1 P:0 B:1 X:1 Q:1");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_page_table_of_the_snapshot_unmapped_by_a_request_is_whole_again_after_the_reset() {
    require_kvm();
    // /drop unmaps a whole 2 MiB block whose page table the snapshot holds, then takes new
    // pages and tables from the pool.  The reset leaves the snapshot's page tables to the
    // guest's undo log: had the VMM given that table back to the pool, the request would have
    // reused it (as a table of its own, or as data) and the next request would see the
    // snapshot's block through whatever the request left in it.
    let t = common::tenant("reserve_tenant", |c| {
        c.memory = 32 << 20;
        c.timeout = std::time::Duration::from_secs(30);
    });
    let mut inst = t.instance().unwrap();
    for _ in 0..3 {
        assert_eq!(body(inst.call(&get("/drop"))), "dropped");
        assert_eq!(body(inst.call(&get("/check"))), CLEAN);
    }
    // Stateful: the block stays unmapped, and dropping it again changes nothing.
    let mut st = common::tenant("reserve_tenant", |c| {
        c.ephemeral = false;
        c.memory = 32 << 20;
        c.timeout = std::time::Duration::from_secs(30);
    })
    .instance()
    .unwrap();
    assert_eq!(body(st.call(&get("/drop"))), "dropped");
    assert_eq!(body(st.call(&get("/check"))), "R:0 P:1 B:1 X:0 Q:0");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn running_out_of_memory_in_a_request_is_typed_and_the_next_is_served() {
    require_kvm();
    let t = common::tenant("reserve_tenant", |c| {
        c.memory = 32 << 20;
        c.timeout = std::time::Duration::from_secs(30);
    });
    let mut inst = t.instance().unwrap();
    let err = inst.call(&get("/hog")).map(|_| ()).unwrap_err();
    assert!(matches!(err.kind, Failure::OutOfMemory { .. }), "{:?}", err.kind);
    assert_eq!(body(inst.call(&get("/check"))), CLEAN);
}
