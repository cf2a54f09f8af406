//! Restoring an instance's RAM to its snapshot, touching only what the last request changed.
//!
//! Which pages changed: the guest's writes come from KVM's dirty log (slot 0 is logged in
//! manual-protect mode), the host's own writes (syscall results, zeroing) from
//! [`GuestMemory`]'s host-dirty bitmap.  Each changed page is copied back from a read-only
//! mapping of the snapshot memfd; the private copy is kept, so the next request writing the
//! same page pays no copy-on-write again.
//!
//! Strategy, with the costs measured on PVM (docs/platform.md):
//! - `KVM_GET_DIRTY_LOG` (~0.8 µs), memcpy per page (~0.1 µs), then `KVM_CLEAR_DIRTY_LOG`
//!   re-protects the pages so the next write to each is seen (~1 µs + 2.5-5 µs per page on
//!   the next request's first write).
//! - **Hot pages**: a page dirtied by [`HOT_AFTER`] resets in a row stays writable (it is left
//!   out of the CLEAR); KVM then reports it dirty every time, so it is simply always copied
//!   back.  That removes the per-request write-fault for the stack top, the response buffer,
//!   and the like.  Every [`DEMOTE_EVERY`] resets all hot pages are re-protected, so a page
//!   that stopped being written stops being copied.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::guest::PAGE_SIZE;
use crate::kvm::raw;
use crate::memory::{GuestMemory, PageBitmap, ReadOnlyMapping};
use crate::vm::slot;

/// Resets in a row a page must be dirty in to become hot.
pub const HOT_AFTER: u8 = 2;
/// Every this many resets, hot pages are re-protected and must earn their place again.
pub const DEMOTE_EVERY: u64 = 64;

/// What one reset did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetReport {
    /// Pages copied back from the snapshot.
    pub pages_restored: u64,
    /// Of those, pages the guest wrote (the rest the host wrote).
    pub guest_pages: u64,
    /// Pages of the kernel area reported dirty and left alone.  Nothing but the CPU's
    /// Accessed/Dirty updates of the page tables (and the guest kernel's clearing of them for
    /// in-guest resets) writes there after the snapshot: they are never restored (restoring a
    /// page table behind PVM's shadow MMU would leave it stale) nor re-protected.
    pub kernel_pages: u64,
    /// Pages currently kept writable.
    pub hot_pages: u64,
    /// Time taken.
    pub duration: Duration,
}

/// Dirty-page bookkeeping of one instance.
#[derive(Debug)]
pub struct ResetTracker {
    dirty: PageBitmap,
    clear: PageBitmap,
    hot: PageBitmap,
    /// The guest-dirty pages of the last reset: the pages whose streak is running.
    dirty_before: PageBitmap,
    streak: Vec<u8>,
    resets: u64,
    /// Bitmap words covering the kernel area (it is 2 MiB aligned: whole words).
    kernel_words: usize,
    /// The snapshot's page tables outside the kernel area (the program's memory on demand):
    /// left alone like the kernel area; the guest undoes the request's changes to them
    /// (see [`crate::pages`]).
    tables: PageBitmap,
}

impl ResetTracker {
    /// A tracker for RAM of `pages` pages whose first `kernel_pages` are the kernel area.
    pub fn new(pages: u64, kernel_pages: u64) -> ResetTracker {
        ResetTracker {
            dirty: PageBitmap::new(pages),
            clear: PageBitmap::new(pages),
            hot: PageBitmap::new(pages),
            dirty_before: PageBitmap::new(pages),
            streak: vec![0; pages as usize],
            resets: 0,
            kernel_words: (kernel_pages / 64) as usize,
            tables: PageBitmap::new(pages),
        }
    }

    /// Marks the snapshot's page tables at `gpas`, which resets leave alone.
    pub fn keep_tables(&mut self, gpas: &[u64]) {
        for &gpa in gpas {
            self.tables.set(gpa / PAGE_SIZE);
        }
    }

    /// Whether a reset leaves page `page` alone (the kernel area, the snapshot's tables).
    pub fn left_alone(&self, page: u64) -> bool {
        page < self.kernel_words as u64 * 64 || self.tables.contains(page)
    }

    /// Brings `ram` back to `snapshot` (a read-only mapping of the same size).
    pub fn reset(
        &mut self,
        vm: &impl std::os::fd::AsRawFd,
        ram: &mut GuestMemory,
        snapshot: &ReadOnlyMapping,
    ) -> Result<ResetReport> {
        let started = Instant::now();
        raw::get_dirty_log(vm, slot::RAM, self.dirty.words_mut())
            .map_err(|source| Error::Os { op: "KVM_GET_DIRTY_LOG", source })?;
        self.resets += 1;
        let demote = self.resets % DEMOTE_EVERY == 0;
        let mut report = ResetReport::default();
        let mut to_clear = 0u64;
        let host = ram.host_dirty_words();
        let words = self.dirty.words().len();
        for w in 0..words {
            let guest = self.dirty.words()[w];
            if w < self.kernel_words {
                report.kernel_pages += u64::from(guest.count_ones());
                self.clear.words_mut()[w] = 0;
                continue;
            }
            let tables = self.tables.words()[w];
            report.kernel_pages += u64::from((guest & tables).count_ones());
            let guest = guest & !tables;
            let changed = (guest | host.get(w).copied().unwrap_or(0)) & !tables;
            // Pages to re-protect: dirty ones that are not hot (all of them when demoting).
            let mut clear = guest;
            let mut bits = guest;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let page = w as u64 * 64 + b;
                let s = &mut self.streak[page as usize];
                *s = s.saturating_add(1);
                if *s >= HOT_AFTER && !demote {
                    self.hot.set(page);
                    clear &= !(1 << b);
                }
            }
            // Pages dirty last time and clean this time lose their streak, so that only
            // pages dirty in HOT_AFTER resets *in a row* become hot (hot pages are never
            // clean: KVM reports a writable page dirty every time).
            let mut idle = !guest & self.dirty_before.words()[w];
            self.dirty_before.words_mut()[w] = guest;
            while idle != 0 {
                let b = idle.trailing_zeros() as u64;
                idle &= idle - 1;
                self.streak[(w as u64 * 64 + b) as usize] = 0;
            }
            if demote {
                self.hot.words_mut()[w] = 0;
                let mut d = guest;
                while d != 0 {
                    let b = d.trailing_zeros() as u64;
                    d &= d - 1;
                    self.streak[(w as u64 * 64 + b) as usize] = 0;
                }
            }
            self.clear.words_mut()[w] = clear;
            to_clear += u64::from(clear.count_ones());
            let mut bits = changed;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let offset = (w as u64 * 64 + b) * PAGE_SIZE;
                ram.mapping().copy_from(snapshot, offset, PAGE_SIZE as usize).expect("page inside RAM");
            }
            report.pages_restored += u64::from(changed.count_ones());
            report.guest_pages += u64::from(guest.count_ones());
        }
        // Only cold pages need re-protecting; hot ones stay writable.
        if to_clear > 0 {
            raw::clear_dirty_log(vm, slot::RAM, 0, self.dirty.pages() as u32, self.clear.words())
                .map_err(|source| Error::Os { op: "KVM_CLEAR_DIRTY_LOG", source })?;
        }
        if let Some(b) = ram.host_dirty() {
            b.clear();
        }
        report.hot_pages = self.hot.count();
        report.duration = started.elapsed();
        Ok(report)
    }
}
