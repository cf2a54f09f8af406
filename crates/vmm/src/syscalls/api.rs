//! The tenantvm request API (documented in docs/guest-abi.md, C SDK in apps/sdk/tenantvm.h).
//!
//! - `wait_for_request()` (syscall `0x10000`) stops the run; the host later resumes it with
//!   rax = `REQUEST_VA`, where [`encode_request`] has written the request.
//! - `respond(status, headers, nheaders, body, body_len)` (`0x10001`) stops the run with the
//!   response, copied out of guest memory here; `respond_and_wait` (`0x10002`) also makes
//!   the program ready for the next request, which its return value points to.  Any bad pointer or oversize part is a typed
//!   fault, not an errno: the response cannot be half-sent.
//!
//! Request area layout (read-only to the program, at `REQUEST_VA`):
//!
//! ```text
//!   0  u32 version (1)        4  u32 header_count
//!   8  ptr method            16  u64 method_len
//!  24  ptr path              32  u64 path_len
//!  40  ptr query             48  u64 query_len
//!  56  ptr headers           64  ptr body          72  u64 body_len
//!  80  u8 random[32]: fresh entropy for this request
//! 112  reserved (zero) up to 128
//! 128  headers: header_count x { ptr name, u64 name_len, ptr value, u64 value_len }
//!      then the bytes: method, path, query, names and values, body, each followed by a NUL
//! ```

use super::{Ctx, Errno, Stop, SysResult};
use crate::error::GuestFault;
pub use crate::error::RequestTooLarge;
use crate::guest::layout::{REQUEST_ENTRY_SIZE, REQUEST_HEADER_SIZE, REQUEST_VA};

/// Version written in the request header.
pub const REQUEST_VERSION: u32 = 1;
/// Size of the fixed request header (`struct tvm_request`).
pub const REQUEST_HEADER: usize = REQUEST_HEADER_SIZE as usize;
/// Size of one header entry (`struct tvm_header`).
pub const HEADER_ENTRY: usize = REQUEST_ENTRY_SIZE as usize;

/// Size limits of requests and responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest encoded request (the request area's size).
    pub max_request: usize,
    /// Most response headers.
    pub max_response_headers: usize,
    /// Largest total size of response header names and values.
    pub max_response_header_bytes: usize,
    /// Largest response body.
    pub max_response_body: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_request: 1 << 20,
            max_response_headers: 100,
            max_response_header_bytes: 64 << 10,
            max_response_body: 8 << 20,
        }
    }
}

/// A request as the host hands it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// e.g. b"GET".
    pub method: Vec<u8>,
    /// e.g. b"/items/1".
    pub path: Vec<u8>,
    /// Without the '?'.
    pub query: Vec<u8>,
    /// Names and values, in order, duplicates allowed.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A response as the program gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Status code as given (validated by the HTTP layer, not here).
    pub status: u64,
    /// Names and values.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Encoded size of `req`.
pub fn encoded_len(req: &Request) -> usize {
    let strings = req.method.len() + req.path.len() + req.query.len() + req.body.len() + 4;
    let headers: usize = req.headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    REQUEST_HEADER + req.headers.len() * HEADER_ENTRY + strings + headers
}

/// Lays out `req` for the program, as it will appear at `REQUEST_VA`.
pub fn encode_request(req: &Request, random: &[u8; 32], limit: usize) -> Result<Vec<u8>, RequestTooLarge> {
    encode_request_at(req, random, limit, REQUEST_VA)
}

/// Lays out `req` as it will appear at `base` (a batch puts several in the request area).
pub fn encode_request_at(
    req: &Request,
    random: &[u8; 32],
    limit: usize,
    base: u64,
) -> Result<Vec<u8>, RequestTooLarge> {
    let size = encoded_len(req);
    if size > limit {
        return Err(RequestTooLarge { size, limit });
    }
    let mut out = vec![0u8; REQUEST_HEADER + req.headers.len() * HEADER_ENTRY];
    let put = |out: &mut Vec<u8>, bytes: &[u8]| -> u64 {
        let at = base + out.len() as u64;
        out.extend_from_slice(bytes);
        out.push(0);
        at
    };
    let method = put(&mut out, &req.method);
    let path = put(&mut out, &req.path);
    let query = put(&mut out, &req.query);
    let mut entries = Vec::with_capacity(req.headers.len());
    for (n, v) in &req.headers {
        let np = put(&mut out, n);
        let vp = put(&mut out, v);
        entries.push([np, n.len() as u64, vp, v.len() as u64]);
    }
    let body = put(&mut out, &req.body);
    let w = |out: &mut Vec<u8>, at: usize, v: u64| out[at..at + 8].copy_from_slice(&v.to_le_bytes());
    out[0..4].copy_from_slice(&REQUEST_VERSION.to_le_bytes());
    out[4..8].copy_from_slice(&(req.headers.len() as u32).to_le_bytes());
    w(&mut out, 8, method);
    w(&mut out, 16, req.method.len() as u64);
    w(&mut out, 24, path);
    w(&mut out, 32, req.path.len() as u64);
    w(&mut out, 40, query);
    w(&mut out, 48, req.query.len() as u64);
    w(&mut out, 56, base + REQUEST_HEADER as u64);
    w(&mut out, 64, body);
    w(&mut out, 72, req.body.len() as u64);
    out[80..112].copy_from_slice(random);
    for (i, e) in entries.iter().enumerate() {
        for (j, v) in e.iter().enumerate() {
            w(&mut out, REQUEST_HEADER + i * HEADER_ENTRY + j * 8, *v);
        }
    }
    debug_assert_eq!(out.len(), size);
    Ok(out)
}

/// wait_for_request(): stops the run until the host has a request.
pub fn sys_wait_for_request(ctx: &mut Ctx<'_>, _: [u64; 6]) -> SysResult {
    if ctx.api.is_none() {
        return Err(Errno::ENOSYS);
    }
    ctx.stop = Some(Stop::WaitForRequest);
    Ok(REQUEST_VA)
}

fn fault(ctx: &mut Ctx<'_>, f: GuestFault) -> SysResult {
    ctx.stop = Some(Stop::ApiFault(f));
    Ok(0)
}

fn read_part(ctx: &Ctx<'_>, ptr: u64, len: u64, call: &'static str) -> Result<Vec<u8>, GuestFault> {
    let bad = GuestFault::BadPointer { call, address: ptr, len };
    let n = usize::try_from(len).map_err(|_| bad.clone())?;
    ctx.mem.read_vec(ptr, n).map_err(|_| bad)
}

/// respond(status, headers, nheaders, body, body_len)
pub fn sys_respond(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    read_response(ctx, a, false)
}

/// respond_and_wait(status, headers, nheaders, body, body_len): returns the next request.
pub fn sys_respond_and_wait(ctx: &mut Ctx<'_>, a: [u64; 6]) -> SysResult {
    read_response(ctx, a, true)?;
    Ok(REQUEST_VA)
}

fn read_response(ctx: &mut Ctx<'_>, a: [u64; 6], then_wait: bool) -> SysResult {
    let Some(limits) = ctx.api.copied() else { return Err(Errno::ENOSYS) };
    let (status, hptr, count, bptr, blen) = (a[0], a[1], a[2], a[3], a[4]);
    let too_large = |what, size, limit| GuestFault::ResponseTooLarge { what, size, limit: limit as u64 };
    if count > limits.max_response_headers as u64 {
        return fault(ctx, too_large("header count", count, limits.max_response_headers));
    }
    if blen > limits.max_response_body as u64 {
        return fault(ctx, too_large("body", blen, limits.max_response_body));
    }
    let table = match read_part(ctx, hptr, count * HEADER_ENTRY as u64, "respond (header table)") {
        Ok(t) => t,
        Err(f) => return fault(ctx, f),
    };
    let mut headers = Vec::with_capacity(count as usize);
    let mut header_bytes: u64 = 0;
    for e in table.chunks_exact(HEADER_ENTRY) {
        let f = |i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().unwrap());
        header_bytes = header_bytes.saturating_add(f(1)).saturating_add(f(3));
        if header_bytes > limits.max_response_header_bytes as u64 {
            return fault(ctx, too_large("headers", header_bytes, limits.max_response_header_bytes));
        }
        let name = read_part(ctx, f(0), f(1), "respond (header name)");
        let value = read_part(ctx, f(2), f(3), "respond (header value)");
        match (name, value) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(e), _) | (_, Err(e)) => return fault(ctx, e),
        }
    }
    let body = match read_part(ctx, bptr, blen, "respond (body)") {
        Ok(b) => b,
        Err(f) => return fault(ctx, f),
    };
    let response = Response { status, headers, body };
    ctx.stop = Some(if then_wait { Stop::RespondedAndWaiting(response) } else { Stop::Responded(response) });
    Ok(0)
}

// Snapshot files (crate::persist).
crate::persist::persist_fields!(ApiLimits {
    max_request,
    max_response_headers,
    max_response_header_bytes,
    max_response_body
});
crate::persist::persist_fields!(Request { method, path, query, headers, body });

#[cfg(test)]
mod tests {
    use super::*;

    fn word(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn request_encoding_round_trips() {
        let req = Request {
            method: b"POST".to_vec(),
            path: b"/a".to_vec(),
            query: b"x=1".to_vec(),
            headers: vec![(b"host".to_vec(), b"example".to_vec()), (b"x".to_vec(), vec![])],
            body: vec![0, 1, 2, 255],
        };
        let out = encode_request(&req, &[9; 32], 4096).unwrap();
        assert_eq!(out.len(), encoded_len(&req));
        let at = |va: u64| (va - REQUEST_VA) as usize;
        let slice = |p: usize, l: usize| &out[at(word(&out, p))..at(word(&out, p)) + word(&out, l) as usize];
        assert_eq!(slice(8, 16), b"POST");
        assert_eq!(slice(24, 32), b"/a");
        assert_eq!(slice(40, 48), b"x=1");
        assert_eq!(slice(64, 72), &[0, 1, 2, 255]);
        assert_eq!(u32::from_le_bytes(out[4..8].try_into().unwrap()), 2);
        let h = at(word(&out, 56));
        assert_eq!(h, REQUEST_HEADER);
        assert_eq!(slice(h, h + 8), b"host");
        assert_eq!(slice(h + 16, h + 24), b"example");
        assert_eq!(word(&out, h + 32 + 24), 0);
        assert_eq!(&out[80..112], &[9; 32]);
    }

    #[test]
    fn oversize_request_is_refused() {
        let req = Request { body: vec![0; 5000], ..Default::default() };
        assert_eq!(encode_request(&req, &[0; 32], 4096).unwrap_err().limit, 4096);
    }
}
