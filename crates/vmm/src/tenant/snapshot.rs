//! A tenant's snapshot: the frozen state every instance starts from, and the freeze that
//! makes it from a booted machine stopped at `wait_for_request`.
//!
//! ```text
//!   freeze = the boot VM's RAM memfd + registers + FPU state (saved into KDATA) + process state
//!            + a read-only view of RAM (host resets copy from it)
//!            + the restore view (slot 3 of every instance: in-guest resets copy from it)
//! ```
//!
//! A snapshot is immutable in fact, not by convention: its fields are private and read through
//! `&self` only, it is shared behind an `Arc`, and both views of its memory are
//! [`ReadOnlyMapping`]s (`PROT_READ`, and a type without a write method).  Instances map its RAM
//! `MAP_PRIVATE`, so their writes never reach the memfd.

use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::kvm_regs;

use super::config::TenantConfig;
use crate::error::{Error, Result};
use crate::guest::kernel::sym;
use crate::guest::layout::*;
use crate::guest::{kdata, PAGE_SIZE};
use crate::machine::Machine;
use crate::memory::user::UserMap;
use crate::memory::{Memfd, ReadOnlyMapping};
use crate::syscalls::Process;
use crate::vm::{SharedRegion, Vm};

/// The frozen state instances start from.
#[derive(Debug)]
pub struct Snapshot {
    /// RAM contents.  Invariant: nothing maps it writable and shared after the freeze.
    ram: Arc<Memfd>,
    /// Read-only view of `ram`: the source of host resets.
    ram_view: ReadOnlyMapping,
    /// What in-guest resets copy back (slot 3 of every instance, see [`crate::restore_view`]).
    restore_view: Arc<ReadOnlyMapping>,
    /// Registers at the freeze.  Invariant: rip = the guest kernel's reset entry.
    regs: kvm_regs,
    /// The emulated process at the freeze.
    proc: Process,
    /// The address space.
    map: UserMap,
    /// Shared memory, if any (the one part of an instance that is not reset: it is shared).
    shared: Option<Arc<SharedRegion>>,
    /// Size of the request area.
    request_area: u64,
    /// The tenant's configuration.
    config: TenantConfig,
    /// Time to boot (and warm up) to the freeze.
    boot_time: Duration,
    /// Pages of RAM that hold data (written during boot).
    resident_pages: u64,
    /// The program's writable ranges of RAM (GPA `[start, end)`), which in-guest resets restore.
    writable: Vec<(u64, u64)>,
    /// Which pages hold data, for a snapshot read from a file (whose page-cache residency says
    /// nothing about that); None for a booted one (its memfd's residency says it).
    data: Option<Vec<bool>>,
    /// When it was made (frozen, or loaded from a file): the threads' deadlines and the timers'
    /// expiries in `proc` are readings of the clocks at about this moment, and a snapshot file
    /// stores them relative to it.
    epoch: crate::persist::Epoch,
    /// For a snapshot read from a file: how long each step of loading it took.
    load_steps: Option<crate::steps::Steps>,
}

impl Snapshot {
    /// RAM contents (instances map them copy-on-write).
    pub(crate) fn ram(&self) -> &Arc<Memfd> {
        &self.ram
    }

    /// Read-only view of the RAM: the source of host resets.
    pub fn ram_view(&self) -> &ReadOnlyMapping {
        &self.ram_view
    }

    /// The restore view (slot 3 of every instance).
    pub(crate) fn restore_view(&self) -> &Arc<ReadOnlyMapping> {
        &self.restore_view
    }

    /// Registers at the freeze (rip = the guest kernel's reset entry).
    pub(crate) fn regs(&self) -> &kvm_regs {
        &self.regs
    }

    /// The emulated process at the freeze.
    pub fn proc(&self) -> &Process {
        &self.proc
    }

    /// The address space.
    pub fn map(&self) -> &UserMap {
        &self.map
    }

    /// Shared memory, if any.
    pub fn shared(&self) -> Option<&Arc<SharedRegion>> {
        self.shared.as_ref()
    }

    /// Size of the request area in bytes.
    pub(crate) fn request_area(&self) -> u64 {
        self.request_area
    }

    /// The tenant's configuration.
    pub fn config(&self) -> &TenantConfig {
        &self.config
    }

    /// Time it took to boot (and warm up) to the freeze.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Pages of RAM that hold data.
    pub fn resident_pages(&self) -> u64 {
        self.resident_pages
    }

    /// The program's writable ranges of RAM (guest-physical, page-aligned).
    pub fn writable(&self) -> &[(u64, u64)] {
        &self.writable
    }

    /// For a snapshot read from a file, how long each step of loading it took (None for a
    /// booted one).
    pub fn load_steps(&self) -> Option<&crate::steps::Steps> {
        self.load_steps.as_ref()
    }

    /// When it was made (see the field).
    pub(crate) fn epoch(&self) -> crate::persist::Epoch {
        self.epoch
    }

    /// Which pages of the RAM may hold data (the others read as zeros and need not be
    /// read: reading a hole of the memfd would allocate it).
    pub(crate) fn data_pages(&self) -> impl Fn(u64) -> bool + '_ {
        let residency = if self.data.is_none() { residency(&self.ram_view) } else { None };
        move |page: u64| match &self.data {
            Some(data) => data.get(page as usize).copied().unwrap_or(false),
            None => residency.as_ref().is_none_or(|r| r.get(page as usize).is_some_and(|&b| b & 1 != 0)),
        }
    }

    /// The snapshot a snapshot file holds ([`FileParts`]), with its shared
    /// memory (made anew from the configuration, as when booting).
    pub(super) fn from_file(f: FileParts, shared: Option<Arc<SharedRegion>>) -> Snapshot {
        Snapshot {
            ram: f.ram,
            ram_view: f.ram_view,
            restore_view: Arc::new(f.restore_view),
            regs: f.regs,
            proc: f.proc,
            map: f.map,
            shared,
            request_area: f.request_area,
            config: f.config,
            boot_time: f.boot_time,
            resident_pages: f.resident_pages,
            writable: f.writable,
            data: Some(f.data),
            epoch: f.epoch,
            load_steps: Some(f.steps),
        }
    }
}

/// The parts of a snapshot as a snapshot file holds them ([`super::snapshot_file::read`] gives
/// them; [`Snapshot::from_file`] makes the snapshot).  Defined here, with the snapshot, so that
/// the file format depends on the snapshot and not the other way round.
pub struct FileParts {
    /// The RAM (the file's range).
    pub ram: Arc<Memfd>,
    /// Read-only view of it.
    pub ram_view: ReadOnlyMapping,
    /// The restore view (the file's range).
    pub restore_view: ReadOnlyMapping,
    /// Which pages hold data.
    pub data: Vec<bool>,
    /// Registers at the freeze.
    pub regs: kvm_regs,
    /// The emulated process.
    pub proc: Process,
    /// The address space.
    pub map: UserMap,
    /// Size of the request area.
    pub request_area: u64,
    /// The configuration it was booted with.
    pub config: TenantConfig,
    /// Its boot time.
    pub boot_time: std::time::Duration,
    /// Pages that held data.
    pub resident_pages: u64,
    /// The program's writable RAM ranges (for the restore view).
    pub writable: Vec<(u64, u64)>,
    /// What the deadlines in `proc` were rebased onto (the moment the state was read).
    pub epoch: crate::persist::Epoch,
    /// How long each step of reading and checking the file took.
    pub steps: crate::steps::Steps,
}

/// Captures the stopped boot machine as a snapshot.  The vCPU is at the `wait_for_request`
/// exit, in the guest kernel's forward path: its registers are the program's (rcx/r11 hold
/// the user rip/rflags), so an instance resumes by loading them with rip = reset_entry,
/// which also reloads the FPU state and segment bases saved into KDATA here.
pub(super) fn freeze(
    mut m: Machine,
    shared: Option<Arc<SharedRegion>>,
    request_area: u64,
    cfg: TenantConfig,
    boot_time: Duration,
) -> Result<Snapshot> {
    let epoch = crate::persist::Epoch::now();
    let vcpu = m.vm.vcpu();
    let sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let xsave = vcpu.get_xsave().map_err(Error::kvm("KVM_GET_XSAVE"))?;
    let mut regs = *m.vm.regs();
    regs.rip = sym::RESET_ENTRY;
    let mut image: Vec<u8> = xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect();
    // KVM reports components the guest's XCR0 does not enable (PKRU, on some hosts); XRSTOR
    // faults on those, so keep XSTATE_BV within the guest's XCR0.
    let xstate_bv = u64::from_le_bytes(image[512..520].try_into().unwrap()) & Vm::xcr0(m.vm.host());
    image[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
    let oob = |e: crate::memory::OutOfRange| Error::GuestKernel(e.to_string());
    m.vm.ram.write(GPA_XSAVE, &image[..image.len().min(XSAVE_SIZE as usize)]).map_err(oob)?;
    m.vm.ram.write_u64(kdata(KD_SNAP_FS), sregs.fs.base).map_err(oob)?;
    m.vm.ram.write_u64(kdata(KD_SNAP_GS), sregs.gs.base).map_err(oob)?;
    // For in-guest resets: the registers to start each batched request from, and page tables
    // whose Dirty bits say "changed since the snapshot".
    let r = m.vm.regs();
    let snap_regs = [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
        r.rip, r.rflags,
    ];
    for (i, v) in snap_regs.into_iter().enumerate() {
        m.vm.ram.write_u64(kdata(KD_SNAP_REGS) + 8 * i as u64, v).map_err(oob)?;
    }
    // The page pool as reset_entry puts it back, and Dirty bits clear in every table.
    for (i, field) in crate::pages::POOL_FIELDS.into_iter().enumerate() {
        let v = m.vm.ram.read_u64(kdata(field)).map_err(oob)?;
        m.vm.ram.write_u64(kdata(KD_SNAP_POOL) + 8 * i as u64, v).map_err(oob)?;
    }
    crate::paging::PageTables::clear_dirty_tables(&mut m.vm.ram, GPA_KPML4).map_err(oob)?;
    // Program memory can be in any page of RAM above the kernel area.
    let memory = m.vm.ram.size();
    let writable = vec![(crate::loader::kernel_area(memory), memory)];
    let ram = m.vm.ram.file().clone();
    let ram_view = ReadOnlyMapping::of(&ram, ram.size() as usize)?;
    let residency = residency(&ram_view);
    let resident_pages = residency.as_ref().map_or(0, |r| r.iter().filter(|&&b| b & 1 != 0).count() as u64);
    let resident = |page: u64| residency.as_ref().is_none_or(|r| r.get(page as usize).is_some_and(|&b| b & 1 != 0));
    let restore_view = Arc::new(crate::restore_view::build(&ram_view, &writable, resident)?);
    Ok(Snapshot {
        ram,
        ram_view,
        restore_view,
        regs,
        proc: {
            let mut proc = m.proc.clone();
            // Whether the running thread did something since it got the vCPU is about the run
            // that ends here; every request starts afresh.
            proc.threads.active = false;
            proc
        },
        map: m.map.clone(),
        shared,
        request_area,
        config: cfg,
        boot_time,
        resident_pages,
        writable,
        data: None,
        epoch,
        load_steps: None,
    })
}

/// Which pages of a shared mapping are backed by memory (mincore: bit 0 of each byte).
fn residency(view: &ReadOnlyMapping) -> Option<Vec<u8>> {
    let mut vec = vec![0u8; view.len() / PAGE_SIZE as usize];
    view.residency(&mut vec).ok().map(|()| vec)
}
