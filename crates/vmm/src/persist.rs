//! A compact binary encoding of VMM state, for snapshot files ([`crate::tenant::snapshot_file`]).
//!
//! Each type that a snapshot holds implements [`Persist`]: `save` appends its fields in
//! order, `load` reads them back in the same order.  There are no field names or tags inside
//! a record: the file's state-layout version ([`crate::tenant::snapshot_file`]) changes
//! whenever any layout changes, and a file of another version is refused, never guessed at.
//! Adding state is one line in each of `save` and `load` (for a plain struct, one name in its
//! [`persist_fields!`] list) and a version bump; `tests/snapshot_file.rs` compares a tenant's
//! whole state before and after a round trip, so a field left out shows up there.
//!
//! `save` refuses, with [`Unsupported`], state that cannot be written; `load` fails with
//! [`Malformed`] on anything out of shape (lengths past the end, bad enum tags, invalid UTF-8),
//! never panics.
//!
//! Times: a deadline (an [`Instant`], or a timer's expiry on a host clock) means nothing in
//! another process or after a reboot.  Each is written relative to the encoder's [`Epoch`] (the
//! moment the snapshot was made) and read back relative to the decoder's (the moment the file
//! is loaded): a wait 5 ms from its end when the snapshot was made is 5 ms from its end when
//! the file has been loaded.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// State a snapshot file cannot hold (the message says what).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// Encoded state that is out of shape (the message says where).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// The moment deadlines are written relative to (saving) or rebased onto (loading): the
/// monotonic instant and the host clocks a timer may run on, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// The instant (thread waits are `Instant`s).
    pub instant: Instant,
    /// CLOCK_REALTIME, CLOCK_MONOTONIC and CLOCK_BOOTTIME in nanoseconds (timerfd expiries).
    clocks: [u64; 3],
}

/// The host clocks an [`Epoch`] reads, in the order of its `clocks`.
const EPOCH_CLOCKS: [libc::clockid_t; 3] = [libc::CLOCK_REALTIME, libc::CLOCK_MONOTONIC, libc::CLOCK_BOOTTIME];

impl Epoch {
    /// Now.
    pub fn now() -> Epoch {
        Epoch { instant: Instant::now(), clocks: EPOCH_CLOCKS.map(crate::host::clock_ns) }
    }

    /// The same moment `d` later, on every clock (tests: a loader's epoch).
    #[cfg(test)]
    pub fn later(&self, d: Duration) -> Epoch {
        let ns = d.as_nanos() as u64;
        Epoch { instant: self.instant + d, clocks: self.clocks.map(|c| c + ns) }
    }

    /// This epoch's reading of host clock `clock` (nanoseconds); None for a clock it does
    /// not read.
    pub fn clock_ns(&self, clock: libc::clockid_t) -> Option<u64> {
        EPOCH_CLOCKS.iter().position(|&c| c == clock).map(|i| self.clocks[i])
    }
}

/// Signed nanoseconds from `base` to `t` (negative: `t` was before `base`), saturating.
fn signed_nanos(t: Instant, base: Instant) -> i64 {
    match t.checked_duration_since(base) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => -i64::try_from(base.duration_since(t).as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Where encoded state is written.
#[derive(Debug)]
pub struct Enc {
    /// The bytes so far.
    pub buf: Vec<u8>,
    /// What times are written relative to.
    pub epoch: Epoch,
}

impl Default for Enc {
    fn default() -> Enc {
        Enc::at(Epoch::now())
    }
}

impl Enc {
    /// An encoder writing times relative to `epoch`.
    pub fn at(epoch: Epoch) -> Enc {
        Enc { buf: Vec::new(), epoch }
    }

    /// Appends a `u64`, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
}

/// Where encoded state is read from.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    /// What times are rebased onto.
    pub epoch: Epoch,
}

impl<'a> Dec<'a> {
    /// Reads `buf` from its start, rebasing times onto now.
    #[cfg(test)]
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec::at(buf, Epoch::now())
    }

    /// Reads `buf` from its start, rebasing times onto `epoch`.
    pub fn at(buf: &'a [u8], epoch: Epoch) -> Dec<'a> {
        Dec { buf, pos: 0, epoch }
    }

    /// Whether everything was read.
    pub fn done(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| Malformed(format!("{n} bytes wanted at offset {}, past the end", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// Reads a length that must fit in what is left (each element taking at least `unit` bytes).
    pub fn len(&mut self, unit: usize) -> Result<usize, Malformed> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(unit.max(1) as u64) > left {
            return Err(Malformed(format!("a length of {n} at offset {} is past the end", self.pos)));
        }
        Ok(n as usize)
    }

    /// Reads a length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.len(1)?;
        self.take(n)
    }

    /// Reads an enum tag below `count`.
    pub fn tag(&mut self, what: &str, count: u64) -> Result<u64, Malformed> {
        let t = self.u64()?;
        if t >= count {
            return Err(Malformed(format!("{what}: unknown variant {t}")));
        }
        Ok(t)
    }
}

/// A value that can be written to a snapshot file and read back.
pub trait Persist: Sized {
    /// Appends the value.
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported>;
    /// Reads a value written by `save`.
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed>;
    /// Appends a sequence of values (length first).
    fn save_many(items: &[Self], e: &mut Enc) -> Result<(), Unsupported> {
        e.u64(items.len() as u64);
        items.iter().try_for_each(|v| v.save(e))
    }
    /// Reads a sequence written by `save_many`.
    fn load_many(d: &mut Dec<'_>) -> Result<Vec<Self>, Malformed> {
        let n = d.len(1)?;
        (0..n).map(|_| Self::load(d)).collect()
    }
}

/// Implements [`Persist`] for a struct by its fields, in the order listed (all of them).
macro_rules! persist_fields {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $crate::persist::Persist for $ty {
            fn save(&self, e: &mut $crate::persist::Enc) -> Result<(), $crate::persist::Unsupported> {
                // Destructured so that adding a field without listing it does not compile.
                let Self { $($field),* } = self;
                $( $crate::persist::Persist::save($field, e)?; )*
                Ok(())
            }
            fn load(d: &mut $crate::persist::Dec<'_>) -> Result<Self, $crate::persist::Malformed> {
                Ok(Self { $($field: $crate::persist::Persist::load(d)?),* })
            }
        }
    };
}
pub(crate) use persist_fields;

macro_rules! persist_ints {
    ($($t:ty),*) => {$(
        impl Persist for $t {
            fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
                e.u64(*self as u64);
                Ok(())
            }
            fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
                let v = d.u64()?;
                // Signed values were sign-extended: read them back as i64 first.
                let fits = if <$t>::MIN == 0 as $t { <$t>::try_from(v).ok() } else { <$t>::try_from(v as i64).ok() };
                fits.ok_or_else(|| Malformed(format!("{v} does not fit {}", stringify!($t))))
            }
        }
    )*};
}
persist_ints!(u16, u32, u64, usize, i32, i64);

/// Bytes are stored as they are, and byte strings whole (not as 8-byte integers each).
impl Persist for u8 {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        e.buf.push(*self);
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        Ok(d.take(1)?[0])
    }
    fn save_many(items: &[Self], e: &mut Enc) -> Result<(), Unsupported> {
        e.bytes(items);
        Ok(())
    }
    fn load_many(d: &mut Dec<'_>) -> Result<Vec<Self>, Malformed> {
        Ok(d.bytes()?.to_vec())
    }
}

impl Persist for bool {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        e.u64(u64::from(*self));
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        Ok(d.tag("bool", 2)? == 1)
    }
}

impl<T: Persist> Persist for Vec<T> {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        T::save_many(self, e)
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        T::load_many(d)
    }
}

impl Persist for VecDeque<u8> {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        let (a, b) = self.as_slices();
        e.bytes(&[a, b].concat());
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        Ok(d.bytes()?.iter().copied().collect())
    }
}

impl Persist for Arc<[u8]> {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        e.bytes(self);
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        Ok(Arc::from(d.bytes()?))
    }
}

impl<T: Persist> Persist for Box<T> {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        self.as_ref().save(e)
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        Ok(Box::new(T::load(d)?))
    }
}

impl<T: Persist> Persist for Arc<Vec<T>> {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        self.as_ref().save(e)
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        Ok(Arc::new(Vec::load(d)?))
    }
}

impl Persist for String {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        e.bytes(self.as_bytes());
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        String::from_utf8(d.bytes()?.to_vec()).map_err(|_| Malformed("a string is not UTF-8".into()))
    }
}

impl Persist for PathBuf {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        use std::os::unix::ffi::OsStrExt;
        e.bytes(self.as_os_str().as_bytes());
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(d.bytes()?)))
    }
}

impl Persist for Duration {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        e.u64(self.as_secs());
        e.u64(u64::from(self.subsec_nanos()));
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        let secs = d.u64()?;
        let nanos = u32::load(d)?;
        if nanos >= 1_000_000_000 {
            return Err(Malformed("a duration's nanoseconds are out of range".into()));
        }
        Ok(Duration::new(secs, nanos))
    }
}

/// A deadline: signed nanoseconds from the encoder's epoch, rebased onto the decoder's.
impl Persist for Instant {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        signed_nanos(*self, e.epoch.instant).save(e)
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        let n = i64::load(d)?;
        let base = d.epoch.instant;
        let t = match u64::try_from(n) {
            Ok(after) => base.checked_add(Duration::from_nanos(after)),
            Err(_) => base.checked_sub(Duration::from_nanos(n.unsigned_abs())),
        };
        // A time the host's clock cannot represent (far past or future): the nearest it can.
        Ok(t.unwrap_or(if n < 0 { base } else { crate::host::far_future() }))
    }
}

/// An expiry on host clock `clock` (nanoseconds, 0 = disarmed), written relative to the
/// encoder's epoch and rebased onto the decoder's: for a timerfd.
pub fn save_expiry(clock: libc::clockid_t, at: u64, e: &mut Enc) -> Result<(), Unsupported> {
    if at == 0 {
        return None::<i64>.save(e);
    }
    let base = e.epoch.clock_ns(clock).ok_or_else(|| Unsupported(format!("a timer on clock {clock}")))?;
    let delta = i128::from(at) - i128::from(base);
    Some(delta.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64).save(e)
}

/// Reads what [`save_expiry`] wrote: an expiry on `clock` as the decoder's epoch sees it
/// (at least 1: an expiry that was due is due at once, never disarmed).
pub fn load_expiry(clock: libc::clockid_t, d: &mut Dec<'_>) -> Result<u64, Malformed> {
    let Some(delta) = Option::<i64>::load(d)? else { return Ok(0) };
    let base = d.epoch.clock_ns(clock).ok_or_else(|| Malformed(format!("a timer on clock {clock}")))?;
    let at = (i128::from(base) + i128::from(delta)).clamp(1, i128::from(u64::MAX));
    Ok(at as u64)
}

impl<T: Persist> Persist for Option<T> {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        match self {
            None => e.u64(0),
            Some(v) => {
                e.u64(1);
                v.save(e)?;
            }
        }
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        Ok(match d.tag("option", 2)? {
            0 => None,
            _ => Some(T::load(d)?),
        })
    }
}

impl<K: Persist + Ord, V: Persist> Persist for BTreeMap<K, V> {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        e.u64(self.len() as u64);
        for (k, v) in self {
            k.save(e)?;
            v.save(e)?;
        }
        Ok(())
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        let n = d.len(16)?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = K::load(d)?;
            m.insert(k, V::load(d)?);
        }
        Ok(m)
    }
}

impl<const N: usize, T: Persist + Copy + Default> Persist for [T; N] {
    fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
        self.iter().try_for_each(|v| v.save(e))
    }
    fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
        let mut out = [T::default(); N];
        for v in &mut out {
            *v = T::load(d)?;
        }
        Ok(out)
    }
}

macro_rules! persist_tuples {
    ($(($($n:tt $t:ident),+)),*) => {$(
        impl<$($t: Persist),+> Persist for ($($t,)+) {
            fn save(&self, e: &mut Enc) -> Result<(), Unsupported> {
                $( self.$n.save(e)?; )+
                Ok(())
            }
            fn load(d: &mut Dec<'_>) -> Result<Self, Malformed> {
                Ok(($($t::load(d)?,)+))
            }
        }
    )*};
}
persist_tuples!((0 A, 1 B), (0 A, 1 B, 2 C), (0 A, 1 B, 2 C, 3 D));

// --- VMM types whose fields are public -------------------------------------------------------

persist_fields!(kvm_bindings::kvm_regs {
    rax,
    rbx,
    rcx,
    rdx,
    rsi,
    rdi,
    rsp,
    rbp,
    r8,
    r9,
    r10,
    r11,
    r12,
    r13,
    r14,
    r15,
    rip,
    rflags
});
#[cfg(test)]
mod tests {
    use super::*;

    fn round<T: Persist + std::fmt::Debug + PartialEq>(v: T) {
        let mut e = Enc::default();
        v.save(&mut e).unwrap();
        let mut d = Dec::new(&e.buf);
        assert_eq!(T::load(&mut d).unwrap(), v);
        assert!(d.done());
        // Every truncation is an error, never a panic.
        for cut in 0..e.buf.len() {
            assert!(T::load(&mut Dec::new(&e.buf[..cut])).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn values_round_trip_and_truncations_fail() {
        round(42u32);
        round(-5i64);
        round(true);
        round(Some(Duration::new(3, 7)));
        round(vec![(1u64, b"ab".to_vec()), (2, vec![])]);
        round(BTreeMap::from([(1u64, (2u64, 3u32))]));
        round("héllo".to_string());
        round(PathBuf::from("/tmp/x"));
        round([1u8; 16]);
    }

    #[test]
    fn deadlines_and_expiries_keep_their_distance_from_the_epoch() {
        let saved = Epoch::now();
        let loaded = saved.later(Duration::from_secs(3600));
        let mut e = Enc::at(saved);
        (saved.instant + Duration::from_millis(5)).save(&mut e).unwrap();
        (saved.instant - Duration::from_millis(2)).save(&mut e).unwrap();
        let mono = saved.clock_ns(libc::CLOCK_MONOTONIC).unwrap();
        save_expiry(libc::CLOCK_MONOTONIC, mono + 5_000_000, &mut e).unwrap();
        save_expiry(libc::CLOCK_REALTIME, 1, &mut e).unwrap(); // long due
        save_expiry(libc::CLOCK_BOOTTIME, 0, &mut e).unwrap(); // disarmed
        let mut d = Dec::at(&e.buf, loaded);
        assert_eq!(Instant::load(&mut d).unwrap() - loaded.instant, Duration::from_millis(5));
        assert_eq!(loaded.instant - Instant::load(&mut d).unwrap(), Duration::from_millis(2));
        let mono_now = loaded.clock_ns(libc::CLOCK_MONOTONIC).unwrap();
        assert_eq!(load_expiry(libc::CLOCK_MONOTONIC, &mut d).unwrap(), mono_now + 5_000_000);
        let real_now = loaded.clock_ns(libc::CLOCK_REALTIME).unwrap();
        assert!(load_expiry(libc::CLOCK_REALTIME, &mut d).unwrap() <= real_now, "due at once");
        assert_eq!(load_expiry(libc::CLOCK_BOOTTIME, &mut d).unwrap(), 0, "still disarmed");
        assert!(d.done());
        // A clock no timer runs on is refused both ways.
        assert!(save_expiry(libc::CLOCK_PROCESS_CPUTIME_ID, 5, &mut Enc::at(saved)).is_err());
        let mut e = Enc::at(saved);
        Some(5i64).save(&mut e).unwrap();
        assert!(load_expiry(libc::CLOCK_PROCESS_CPUTIME_ID, &mut Dec::at(&e.buf, loaded)).is_err());
    }

    #[test]
    fn absurd_lengths_and_tags_are_malformed() {
        let mut e = Enc::default();
        e.u64(u64::MAX);
        assert!(Vec::<u64>::load(&mut Dec::new(&e.buf)).is_err());
        assert!(Option::<u64>::load(&mut Dec::new(&7u64.to_le_bytes())).is_err());
        assert!(u16::load(&mut Dec::new(&70000u64.to_le_bytes())).is_err());
        assert!(String::load(&mut Dec::new(&[1, 0, 0, 0, 0, 0, 0, 0, 0xff])).is_err());
    }
}
