//! Guest memory as the host sees it.
//!
//! - [`GuestMemory`]: guest RAM (memory slot 0), bounds-checked copies by guest-physical
//!   address, and the record of which pages the *host* wrote (the KVM dirty log only sees the
//!   guest's writes; a reset must restore both).
//! - [`user`]: the program's address space: which virtual ranges exist, with which rights,
//!   and where they live.
//! - [`mapping`]: the raw host mappings underneath (the only unsafe code here).

#[allow(unsafe_code)]
pub mod mapping;
pub mod user;

use std::sync::Arc;

pub use mapping::{Mapping, Memfd, ReadOnlyMapping, Sharing};

use crate::error::Result;
use crate::guest::PAGE_SIZE;

/// An access outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest-physical range {gpa:#x}+{len:#x} is outside guest memory")]
pub struct OutOfRange {
    /// Start of the access.
    pub gpa: u64,
    /// Its length.
    pub len: u64,
}

/// One bit per 4 KiB page.
#[derive(Debug, Clone)]
pub struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl PageBitmap {
    /// A bitmap for `pages` pages, all clear.
    pub fn new(pages: u64) -> PageBitmap {
        PageBitmap { words: vec![0; pages.div_ceil(64) as usize], pages }
    }

    /// Number of pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks `page`.
    pub fn set(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    /// Marks every page touching `[start, start + len)` (byte addresses).
    pub fn set_range(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        for page in start / PAGE_SIZE..=(start + len - 1) / PAGE_SIZE {
            self.set(page);
        }
    }

    /// Whether `page` is marked.
    pub fn contains(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// The raw words (bit `i` of word `w` is page `64 * w + i`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Mutable raw words, e.g. for `KVM_GET_DIRTY_LOG` to fill.
    pub fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    /// Number of marked pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// Guest RAM: memory slot 0, mapped in the host.
///
/// Invariant: when `host_dirty` is `Some`, every host write through this type has marked the
/// pages it touched, so "KVM dirty log ∪ host_dirty" is every page that differs from the
/// state the tracking started from.
#[derive(Debug)]
pub struct GuestMemory {
    map: Mapping,
    file: Arc<Memfd>,
    host_dirty: Option<PageBitmap>,
}

impl GuestMemory {
    /// Fresh, zeroed RAM of `size` bytes in its own memfd, mapped shared (so that the memfd
    /// holds the guest's memory and can become a snapshot).
    pub fn new(size: u64) -> Result<GuestMemory> {
        let file = Arc::new(Memfd::new("tenantvm-ram", size)?);
        let map = Mapping::shared(&file, size as usize)?;
        Ok(GuestMemory { map, file, host_dirty: None })
    }

    /// RAM that starts as a copy-on-write view of `snapshot`.
    pub fn from_snapshot(snapshot: Arc<Memfd>) -> Result<GuestMemory> {
        let map = Mapping::private(&snapshot, snapshot.size() as usize)?;
        Ok(GuestMemory { map, file: snapshot, host_dirty: None })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The backing memfd.
    pub fn file(&self) -> &Arc<Memfd> {
        &self.file
    }

    /// The host mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// Starts (or stops) recording host writes.
    pub fn track_host_writes(&mut self, on: bool) {
        self.host_dirty = on.then(|| PageBitmap::new(self.size() / PAGE_SIZE));
    }

    /// The pages the host wrote since tracking started or was last cleared.
    pub fn host_dirty(&mut self) -> Option<&mut PageBitmap> {
        self.host_dirty.as_mut()
    }

    /// The raw words of the host-dirty bitmap (empty when not tracking).
    pub fn host_dirty_words(&self) -> &[u64] {
        self.host_dirty.as_ref().map(PageBitmap::words).unwrap_or(&[])
    }

    fn mark(&mut self, gpa: u64, len: u64) {
        if let Some(b) = self.host_dirty.as_mut() {
            b.set_range(gpa, len);
        }
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        self.map.read(gpa, buf).ok_or(OutOfRange { gpa, len: buf.len() as u64 })
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        self.map.write(gpa, data).ok_or(OutOfRange { gpa, len: data.len() as u64 })?;
        self.mark(gpa, data.len() as u64);
        Ok(())
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, OutOfRange> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&mut self, gpa: u64, value: u64) -> Result<(), OutOfRange> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// Makes `[gpa, gpa + len)` read as zeros.  Whole pages of shared RAM are freed (hole
    /// punched in the memfd) rather than written, so zeroing untouched memory costs nothing.
    pub fn zero(&mut self, gpa: u64, len: u64) -> Result<(), OutOfRange> {
        let end = gpa.checked_add(len).filter(|&e| e <= self.size()).ok_or(OutOfRange { gpa, len })?;
        if self.map.sharing() == Sharing::Shared && self.host_dirty.is_none() {
            let first = gpa.next_multiple_of(PAGE_SIZE).min(end);
            let last = (end / PAGE_SIZE * PAGE_SIZE).max(first);
            if last > first && self.file.punch_hole(first, last - first).is_ok() {
                self.map.fill(gpa, (first - gpa) as usize, 0);
                self.map.fill(last, (end - last) as usize, 0);
                return Ok(());
            }
        }
        self.map.fill(gpa, len as usize, 0).ok_or(OutOfRange { gpa, len })?;
        self.mark(gpa, len);
        Ok(())
    }
}
