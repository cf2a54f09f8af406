//! Request marshalling: any request either encodes within its limit into a layout whose every
//! pointer and length stays inside the encoded area and reads back the same fields, or is
//! refused as too large.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::{encode_request, encoded_len, HEADER_ENTRY, REQUEST_HEADER, REQUEST_VA};
use vmm::Request;

#[derive(Debug, Arbitrary)]
struct Input {
    method: Vec<u8>,
    path: Vec<u8>,
    query: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    limit: u16,
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn field<'a>(out: &'a [u8], ptr_at: usize, len_at: usize) -> &'a [u8] {
    let (ptr, len) = (word(out, ptr_at), word(out, len_at));
    let start = ptr.checked_sub(REQUEST_VA).expect("pointer below the area") as usize;
    let end = start.checked_add(len as usize).expect("overflow");
    assert!(end < out.len(), "field runs past the area");
    assert_eq!(out[end], 0, "strings are NUL-terminated");
    &out[start..end]
}

fuzz_target!(|input: Input| {
    let req = Request {
        method: input.method,
        path: input.path,
        query: input.query,
        headers: input.headers,
        body: input.body,
    };
    let limit = usize::from(input.limit) + REQUEST_HEADER;
    match encode_request(&req, &[7; 32], limit) {
        Err(e) => assert!(encoded_len(&req) > limit && e.limit == limit),
        Ok(out) => {
            assert!(out.len() <= limit && out.len() == encoded_len(&req));
            assert_eq!(field(&out, 8, 16), &req.method[..]);
            assert_eq!(field(&out, 24, 32), &req.path[..]);
            assert_eq!(field(&out, 40, 48), &req.query[..]);
            assert_eq!(field(&out, 64, 72), &req.body[..]);
            let count = u32::from_le_bytes(out[4..8].try_into().unwrap()) as usize;
            assert_eq!(count, req.headers.len());
            for (i, (n, v)) in req.headers.iter().enumerate() {
                let e = REQUEST_HEADER + i * HEADER_ENTRY;
                assert_eq!(field(&out, e, e + 8), &n[..]);
                assert_eq!(field(&out, e + 16, e + 24), &v[..]);
            }
        }
    }
});
