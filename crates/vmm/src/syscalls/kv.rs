//! The request API's key-value calls (docs/guest-abi.md, "Key-value storage"): they check
//! the guest's arguments and the limits, then hand the operation to the tenant's
//! [`crate::kv::KvAccess`].  A bad pointer or a limit is an errno, never a fault: the program
//! decides what to answer (the SDK's examples answer 503 when the store is unavailable).

use super::{Ctx, Errno, SysResult};
use crate::kv::{KvError, KvOp, KvReply};

/// The guest's view of a store failure.
fn errno(e: &KvError) -> Errno {
    match e {
        KvError::Unavailable(_) => Errno(libc::EIO),
        KvError::Timeout(_) => Errno::ETIMEDOUT,
        KvError::NotInteger => Errno(libc::EBADMSG),
        KvError::Overflow => Errno(libc::EOVERFLOW),
    }
}

/// Counts one call against the request's budget and reads its key.
fn begin(ctx: &mut Ctx<'_>, key: u64, key_len: u64) -> Result<Vec<u8>, Errno> {
    let Some(kv) = ctx.kv else { return Err(Errno::ENOSYS) };
    ctx.kv_ops = ctx.kv_ops.saturating_add(1);
    if ctx.kv_ops > kv.limits.max_ops_per_request {
        return Err(Errno(libc::EDQUOT));
    }
    if key_len == 0 {
        return Err(Errno::EINVAL);
    }
    if key_len > kv.limits.max_key as u64 {
        return Err(Errno::ENAMETOOLONG);
    }
    ctx.mem.read_vec(key, key_len as usize)
}

/// Runs `op` on the tenant's store, at most until the request's deadline; the wait is charged
/// to the request's time limit like a sleep.
fn run(ctx: &mut Ctx<'_>, op: KvOp) -> Result<KvReply, Errno> {
    let kv = ctx.kv.ok_or(Errno::ENOSYS)?;
    let started = std::time::Instant::now();
    let result = kv.store.execute(&kv.namespace, op, ctx.deadline);
    ctx.blocked += started.elapsed();
    result.map_err(|e| errno(&e))
}

/// kv_get(key, key_len, buf, buf_len): copies up to `buf_len` bytes of the value to `buf` and
/// returns the value's full length (call again with a larger buffer if it is more); ENOENT if
/// the key is not set.
pub fn sys_kv_get(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let key = begin(ctx, a[0], a[1])?;
    match run(ctx, KvOp::Get { key })? {
        KvReply::Value(Some(v)) => {
            let n = (a[3] as usize).min(v.len());
            ctx.mem.write(a[2], &v[..n])?;
            Ok(v.len() as u64)
        }
        KvReply::Value(None) => Err(Errno::ENOENT),
        _ => Err(Errno(libc::EIO)),
    }
}

/// kv_set(key, key_len, value, value_len, ttl_ms): 0; `ttl_ms` 0 keeps the key until deleted.
pub fn sys_kv_set(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let key = begin(ctx, a[0], a[1])?;
    let max_value = ctx.kv.map_or(0, |kv| kv.limits.max_value);
    if a[3] > max_value as u64 {
        return Err(Errno(libc::E2BIG));
    }
    let value = ctx.mem.read_vec(a[2], a[3] as usize)?;
    match run(ctx, KvOp::Set { key, value, ttl_ms: a[4] })? {
        KvReply::Done(_) => Ok(0),
        _ => Err(Errno(libc::EIO)),
    }
}

/// kv_incr(key, key_len, delta, result): adds `delta` (a missing key is 0), writes the new
/// value to `*result` (an i64) and returns 0.
pub fn sys_kv_incr(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let key = begin(ctx, a[0], a[1])?;
    // Check the result pointer before the store changes anything.
    ctx.mem.read_u64(a[3])?;
    match run(ctx, KvOp::Incr { key, delta: a[2] as i64 })? {
        KvReply::Int(n) => {
            ctx.mem.write_u64(a[3], n as u64)?;
            Ok(0)
        }
        _ => Err(Errno(libc::EIO)),
    }
}

/// kv_delete(key, key_len): 1 if the key existed, else 0.
pub fn sys_kv_delete(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    let key = begin(ctx, a[0], a[1])?;
    match run(ctx, KvOp::Delete { key })? {
        KvReply::Done(existed) => Ok(u64::from(existed)),
        _ => Err(Errno(libc::EIO)),
    }
}
