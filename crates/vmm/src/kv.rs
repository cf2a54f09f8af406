//! Tenant key-value storage: the host side of the request API's `kv_*` calls.
//!
//! The VMM links no database.  The embedder provides a [`KvStore`] (the Python server wires
//! SQLite or Redis/Valkey in through `tenantvm._native.KvBridge`) and binds it to a tenant with
//! [`KvAccess`], which carries the tenant's namespace: every operation reaches the store as
//! `(namespace, key)`, and the guest can name only the key, so one tenant can never reach
//! another's keys.  Limits (key and value sizes, operations per request) are checked here,
//! before the store sees anything.
//!
//! A store call runs on the vCPU thread, which is seccomp-restricted in a server (no sockets,
//! no file opens): a store must hand the work to a thread of its own and wait for it with a
//! time limit, as `KvBridge` does, rather than do I/O itself.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// One operation on a tenant's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// The value of `key`, if set and not expired.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Sets `key` to `value`, expiring after `ttl_ms` milliseconds if not 0.
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Time to live in milliseconds; 0: no expiry.
        ttl_ms: u64,
    },
    /// Adds `delta` to the integer value of `key` (a missing key counts as 0), atomically.
    Incr {
        /// The key.
        key: Vec<u8>,
        /// What to add.
        delta: i64,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

/// What a store answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvReply {
    /// `Get`: the value, or None for a missing key.
    Value(Option<Vec<u8>>),
    /// `Incr`: the new value.
    Int(i64),
    /// `Set`: done; `Delete`: whether the key existed.
    Done(bool),
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The store cannot be reached or failed (the guest sees EIO).
    #[error("the key-value store is unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer in time (ETIMEDOUT).
    #[error("the key-value store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// `Incr` on a value that is not a decimal integer (EINVAL).
    #[error("the value is not an integer")]
    NotInteger,
    /// `Incr` would leave the 64-bit range (EOVERFLOW).
    #[error("the increment overflows")]
    Overflow,
}

/// A key-value store, provided by the embedder.
pub trait KvStore: Send + Sync + fmt::Debug {
    /// Runs `op` on the keys of `namespace`, giving up (`KvError::Timeout`) at `deadline` if
    /// set: the request's time limit, so that a slow store never holds a request past it.
    fn execute(&self, namespace: &[u8], op: KvOp, deadline: Option<Instant>) -> Result<KvReply, KvError>;
}

/// Size and rate limits of the KV calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key (bytes); keys are never empty.
    pub max_key: usize,
    /// Longest value (bytes).
    pub max_value: usize,
    /// Most KV calls in one request (a call refused for this limit counts too).
    pub max_ops_per_request: u32,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits { max_key: 512, max_value: 64 << 10, max_ops_per_request: 64 }
    }
}

/// A store bound to one tenant: its namespace and limits.
#[derive(Debug, Clone)]
pub struct KvAccess {
    /// The store.
    pub store: Arc<dyn KvStore>,
    /// The tenant's namespace (its name, in a server).
    pub namespace: Vec<u8>,
    /// Limits.
    pub limits: KvLimits,
}

/// A value as `Incr` reads it: decimal, `0` or `-?[1-9][0-9]*`, in the i64 range (Redis's rule).
fn parse_int(v: &[u8]) -> Option<i64> {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    let canonical = v == b"0" || (digits.first().is_some_and(|d| (b'1'..=b'9').contains(d)));
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// (namespace, key) → (value, expiry).
type MemoryMap = std::collections::HashMap<(Vec<u8>, Vec<u8>), (Vec<u8>, Option<std::time::Instant>)>;

/// A store in memory, for tests and one-process use (no expiry clock beyond `Instant`).
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: std::sync::Mutex<MemoryMap>,
}

impl KvStore for MemoryKv {
    fn execute(&self, namespace: &[u8], op: KvOp, _: Option<Instant>) -> Result<KvReply, KvError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let live = |e: &(Vec<u8>, Option<std::time::Instant>)| e.1.is_none_or(|t| t > now);
        let ns = namespace.to_vec();
        Ok(match op {
            KvOp::Get { key } => KvReply::Value(map.get(&(ns, key)).filter(|e| live(e)).map(|e| e.0.clone())),
            KvOp::Set { key, value, ttl_ms } => {
                let expires = (ttl_ms > 0).then(|| now + std::time::Duration::from_millis(ttl_ms));
                map.insert((ns, key), (value, expires));
                KvReply::Done(true)
            }
            KvOp::Incr { key, delta } => {
                let k = (ns, key);
                let old = match map.get(&k).filter(|e| live(e)) {
                    None => 0,
                    Some(e) => parse_int(&e.0).ok_or(KvError::NotInteger)?,
                };
                let new = old.checked_add(delta).ok_or(KvError::Overflow)?;
                let expires = map.get(&k).filter(|e| live(e)).and_then(|e| e.1);
                map.insert(k, (new.to_string().into_bytes(), expires));
                KvReply::Int(new)
            }
            KvOp::Delete { key } => KvReply::Done(map.remove(&(ns, key)).is_some_and(|e| live(&e))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_as_redis_reads_them() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        for bad in [&b""[..], b"-", b"-0", b"01", b"+1", b" 1", b"1 ", b"9223372036854775808", b"1e3"] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_memory_store_keeps_namespaces_apart() {
        let kv = MemoryKv::default();
        kv.execute(b"a", KvOp::Set { key: b"k".to_vec(), value: b"1".to_vec(), ttl_ms: 0 }, None).unwrap();
        assert_eq!(kv.execute(b"b", KvOp::Get { key: b"k".to_vec() }, None).unwrap(), KvReply::Value(None));
        assert_eq!(kv.execute(b"a", KvOp::Incr { key: b"k".to_vec(), delta: 2 }, None).unwrap(), KvReply::Int(3));
        assert_eq!(kv.execute(b"a", KvOp::Incr { key: b"k".to_vec(), delta: i64::MAX }, None), Err(KvError::Overflow));
    }
}
