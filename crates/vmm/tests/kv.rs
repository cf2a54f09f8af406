//! The request API's key-value calls (apps/examples/kv.c over a `vmm::kv::MemoryKv`): results,
//! errno for every limit, tenant scoping, a store that fails or is slow, the seccomp filter.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{require_kvm, tenant};
use vmm::kv::{KvAccess, KvError, KvLimits, KvOp, KvReply, KvStore, MemoryKv};
use vmm::Request;

fn req(method: &str, path: &str, query: &str, body: &[u8]) -> Request {
    Request {
        method: method.as_bytes().to_vec(),
        path: path.as_bytes().to_vec(),
        query: query.as_bytes().to_vec(),
        body: body.to_vec(),
        ..Default::default()
    }
}

/// (status, x-kv-errno, body)
fn call(inst: &mut vmm::Instance, r: &Request) -> (u64, i32, Vec<u8>) {
    let out = inst.call(r).unwrap().response;
    let errno = out.headers.iter().find(|(n, _)| n == b"x-kv-errno").map(|(_, v)| v.clone()).unwrap_or_default();
    (out.status, String::from_utf8(errno).unwrap().parse().unwrap_or(-1), out.body)
}

fn kv_tenant(store: Arc<dyn KvStore>, namespace: &str) -> vmm::Tenant {
    let access = KvAccess { store, namespace: namespace.as_bytes().to_vec(), limits: KvLimits::default() };
    tenant("kv", |_| {}).with_kv(Some(access))
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn get_set_incr_delete_and_their_errors() {
    require_kvm();
    let store: Arc<dyn KvStore> = Arc::new(MemoryKv::default());
    let mut inst = kv_tenant(store, "t").instance().unwrap();
    assert_eq!(call(&mut inst, &req("GET", "/k/a", "", b"")), (404, libc::ENOENT, vec![]));
    assert_eq!(call(&mut inst, &req("PUT", "/k/a", "", b"\0bin\xff")).0, 204);
    assert_eq!(call(&mut inst, &req("GET", "/k/a", "", b"")), (200, 0, b"\0bin\xff".to_vec()));
    assert_eq!(call(&mut inst, &req("POST", "/k/a", "incr=1", b"")).1, libc::EBADMSG);
    assert_eq!(call(&mut inst, &req("POST", "/k/n", "incr=-5", b"")), (200, 0, b"-5".to_vec()));
    let near_max = (i64::MAX - 5).to_string().into_bytes();
    assert_eq!(call(&mut inst, &req("POST", "/k/n", "incr=9223372036854775807", b"")), (200, 0, near_max.clone()));
    assert_eq!(call(&mut inst, &req("POST", "/k/n", "incr=6", b"")).1, libc::EOVERFLOW);
    assert_eq!(call(&mut inst, &req("GET", "/k/n", "", b"")), (200, 0, near_max));
    assert_eq!(call(&mut inst, &req("DELETE", "/k/a", "", b"")), (200, 0, b"1".to_vec()));
    assert_eq!(call(&mut inst, &req("DELETE", "/k/a", "", b"")), (200, 0, b"0".to_vec()));
    // Limits: key length, value size, calls per request (the 65th call of one request fails,
    // and the next request has its own budget).
    let long_key = format!("/k/{}", "x".repeat(513));
    assert_eq!(call(&mut inst, &req("GET", &long_key, "", b"")).1, libc::ENAMETOOLONG);
    assert_eq!(call(&mut inst, &req("GET", &long_key[..3 + 512], "", b"")).1, libc::ENOENT);
    assert_eq!(call(&mut inst, &req("PUT", "/k/big", "", &vec![7; 65537])).1, libc::E2BIG);
    assert_eq!(call(&mut inst, &req("PUT", "/k/big", "", &vec![7; 65536])).0, 204);
    assert_eq!(call(&mut inst, &req("POST", "/k/c", "times=64", b"")), (200, 0, b"64".to_vec()));
    assert_eq!(call(&mut inst, &req("POST", "/k/c", "times=65", b"")).1, libc::EDQUOT);
    assert_eq!(call(&mut inst, &req("POST", "/k/c", "", b"")), (200, 0, b"129".to_vec()));
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn tenants_sharing_a_store_never_see_each_others_keys() {
    require_kvm();
    let store: Arc<dyn KvStore> = Arc::new(MemoryKv::default());
    let mut a = kv_tenant(store.clone(), "a").instance().unwrap();
    let mut a2 = kv_tenant(store.clone(), "a").instance().unwrap();
    let mut b = kv_tenant(store.clone(), "b").instance().unwrap();
    assert_eq!(call(&mut a, &req("PUT", "/k/secret", "", b"of a")).0, 204);
    assert_eq!(call(&mut b, &req("GET", "/k/secret", "", b"")).0, 404);
    assert_eq!(call(&mut b, &req("DELETE", "/k/secret", "", b"")).2, b"0");
    assert_eq!(call(&mut a2, &req("GET", "/k/secret", "", b"")).2, b"of a");
    assert_eq!(
        store.execute(b"a", KvOp::Get { key: b"secret".to_vec() }, None).unwrap(),
        KvReply::Value(Some(b"of a".to_vec()))
    );
}

/// A store that fails, or answers too late, as told.
#[derive(Debug, Default)]
struct Flaky {
    mode: AtomicU32,
}

impl KvStore for Flaky {
    fn execute(&self, _: &[u8], _: KvOp, _: Option<std::time::Instant>) -> Result<KvReply, KvError> {
        match self.mode.load(Ordering::SeqCst) {
            0 => Ok(KvReply::Int(1)),
            1 => Err(KvError::Unavailable("down".into())),
            _ => Err(KvError::Timeout(Duration::from_millis(1))),
        }
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_failing_store_is_a_503_and_the_tenant_keeps_serving() {
    require_kvm();
    let flaky = Arc::new(Flaky::default());
    let t = tenant("counter_kv", |c| c.ephemeral = false);
    let access = KvAccess { store: flaky.clone(), namespace: b"c".to_vec(), limits: KvLimits::default() };
    let mut inst = t.with_kv(Some(access)).instance().unwrap();
    let get = req("GET", "/", "", b"");
    assert_eq!(inst.call(&get).unwrap().response.body, b"Hello 1 World!");
    flaky.mode.store(1, Ordering::SeqCst);
    let r = inst.call(&get).unwrap().response;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).contains("errno 5")), (503, true));
    flaky.mode.store(2, Ordering::SeqCst);
    let r = inst.call(&get).unwrap().response;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).contains("errno 110")), (503, true));
    flaky.mode.store(0, Ordering::SeqCst);
    assert_eq!(inst.call(&get).unwrap().response.status, 200);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn without_a_store_the_calls_are_enosys() {
    require_kvm();
    let mut inst = tenant("kv", |_| {}).instance().unwrap();
    assert_eq!(call(&mut inst, &req("GET", "/k/a", "", b"")).1, libc::ENOSYS);
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn kv_calls_work_on_a_seccomp_restricted_thread() {
    require_kvm();
    let t = kv_tenant(Arc::new(MemoryKv::default()), "t");
    std::thread::spawn(move || {
        vmm::sandbox::restrict_current_thread().unwrap();
        let mut inst = t.instance().unwrap();
        assert_eq!(call(&mut inst, &req("POST", "/k/n", "incr=2", b"")), (200, 0, b"2".to_vec()));
        assert_eq!(call(&mut inst, &req("GET", "/k/n", "", b"")), (200, 0, b"2".to_vec()));
    })
    .join()
    .unwrap();
}

/// Records the deadline each call was given.
#[derive(Debug, Default)]
struct Deadlines {
    seen: std::sync::Mutex<Vec<Option<std::time::Duration>>>,
}

impl KvStore for Deadlines {
    fn execute(&self, _: &[u8], _: KvOp, deadline: Option<std::time::Instant>) -> Result<KvReply, KvError> {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        self.seen.lock().unwrap().push(left);
        Ok(KvReply::Int(1))
    }
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn a_store_is_never_given_longer_than_the_requests_time_limit() {
    require_kvm();
    let store = Arc::new(Deadlines::default());
    let limit = Duration::from_millis(300);
    let t = tenant("counter_kv", |c| {
        c.ephemeral = false;
        c.timeout = limit;
    });
    let access = KvAccess { store: store.clone(), namespace: b"c".to_vec(), limits: KvLimits::default() };
    let mut inst = t.with_kv(Some(access)).instance().unwrap();
    assert_eq!(inst.call(&req("GET", "/", "", b"")).unwrap().response.status, 200);
    let seen = store.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].is_some_and(|left| left <= limit), "{seen:?}");
}

#[test]
#[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
fn each_request_of_a_batch_has_its_own_budget_of_kv_calls() {
    require_kvm();
    let mut inst = kv_tenant(Arc::new(MemoryKv::default()), "t").instance().unwrap();
    let forty = req("POST", "/k/n", "times=40", b"");
    let bodies: Vec<_> =
        inst.call_batch(&[forty.clone(), forty.clone(), forty]).into_iter().map(|r| r.unwrap()).collect();
    let got: Vec<_> = bodies.iter().map(|r| (r.response.status, r.response.body.clone())).collect();
    assert_eq!(got, vec![(200, b"40".to_vec()), (200, b"80".to_vec()), (200, b"120".to_vec())]);
}
