//! One KVM VM with one vCPU, set up to run the tenantvm guest kernel.
//!
//! Memory slots (see guest/layout.h for the full map):
//! - slot 0: guest RAM at GPA 0 ([`GuestMemory`]); dirty-logged when the VM is an instance
//!   that gets reset,
//! - slot 1: the vCPU area at `GPA_VCPU` (kernel stacks, PVM's VIF page, clock anchor,
//!   request area): per VM, never part of a snapshot,
//! - slot 2: tenant shared memory at `GPA_SHARED`, if any,
//! - slot 3: an instance's restore view at `GPA_SNAPSHOT` (read-only),
//! - slot 4: a one-shot run's program file at `GPA_IMAGE` (read-only; see
//!   [`crate::loader::file_pages`]).
//!
//! The vCPU starts in 64-bit supervisor mode at `kernel_start` with paging on; the system
//! registers are the same on both platforms (PVM accepts the textbook long-mode values as long
//! as CS/SS are the DPL-0 selectors 0x10/0x18).

use std::sync::Arc;

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_segment, kvm_userspace_memory_region, kvm_xcrs, Msrs};
use kvm_ioctls::{SyncReg, VcpuFd, VmFd};

use crate::error::{Error, Result};
use crate::guest::kernel::sym;
use crate::guest::layout::*;
use crate::kvm::Host;
use crate::memory::{GuestMemory, Mapping, ReadOnlyMapping};
use crate::steps::StepClock;

/// Memory slot numbers.
pub mod slot {
    /// Guest RAM.
    pub const RAM: u32 = 0;
    /// The vCPU area.
    pub const VCPU_AREA: u32 = 1;
    /// Tenant shared memory.
    pub const SHARED: u32 = 2;
    /// The tenant's restore view, read-only (instances: the source of in-guest resets).
    pub const SNAPSHOT: u32 = 3;
    /// The program's file (one-shot runs), read-only.
    pub const IMAGE: u32 = 4;
}

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;
/// RFLAGS bits cleared on `syscall`: TF, IF, DF, IOPL, NT, AC.  (IF is safe to mask here:
/// the guest kernel returns with `sysretq`/`int $0x19`, which reload RFLAGS from r11.)
const SFMASK: u64 = 0x4_7700;
const CR0_PE_MP_ET_NE_WP_AM_PG: u64 = 0x8005_0033;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_FSGSBASE: u64 = 1 << 16;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_SCE_LME_LMA_NXE: u64 = 0xd01;
/// XCR0 components offered to programs: x87, SSE, AVX and the AVX-512 states (not PKRU, MPX
/// or AMX, which need kernel cooperation Linux gives only on request).
const XCR0_ALLOWED: u64 = 0b1110_0111;

/// Where things are in the vCPU area (slot 1) past its fixed pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuAreaLayout {
    /// Offset of the response area (batched responses copied out by the guest kernel).
    pub response: u64,
    /// Its size.
    pub response_size: u64,
    /// Offset of the batch staging area: the encoded requests of a batch, which the guest
    /// kernel copies into the request area one at a time (the program maps only the request
    /// area, so a request never sees the others of its batch).  As large as the request area.
    pub staging: u64,
    /// Offset of the hot-page streak counters (one byte per page of RAM).
    pub streak: u64,
    /// Offset of the page-table change log (see [`crate::pages`]).
    pub ptlog: u64,
    /// Its capacity in entries.
    pub ptlog_capacity: u64,
    /// Total size.
    pub size: u64,
}

/// Room for the responses of one batch; a response that does not fit goes to the host.
pub const RESPONSE_AREA: u64 = 1 << 20;

impl VcpuAreaLayout {
    /// The layout for a request area of `request_area` bytes (0: not a tenant, nothing past
    /// the fixed pages) and `memory` bytes of RAM.
    pub fn new(request_area: u64, memory: u64) -> VcpuAreaLayout {
        let page = crate::guest::PAGE_SIZE;
        // Room for two changes per page of RAM (a page and its share of the tables), and
        // some for the VMM's own changes.
        let ptlog_capacity = 2 * (memory / page) + 4096;
        let log_bytes = (ptlog_capacity * PTLOG_ENTRY).next_multiple_of(page);
        if request_area == 0 {
            return VcpuAreaLayout {
                response: VC_REQUEST,
                response_size: 0,
                staging: VC_REQUEST,
                streak: VC_REQUEST,
                ptlog: VC_REQUEST,
                ptlog_capacity,
                size: VC_REQUEST + log_bytes,
            };
        }
        let response = VC_REQUEST + request_area.next_multiple_of(page);
        let staging = response + RESPONSE_AREA;
        let streak = staging + request_area.next_multiple_of(page);
        let ptlog = streak + (memory / page).next_multiple_of(page);
        let size = ptlog + log_bytes;
        VcpuAreaLayout { response, response_size: RESPONSE_AREA, staging, streak, ptlog, ptlog_capacity, size }
    }

    /// The layout of a vCPU area of `size` bytes for `memory` bytes of RAM: where its log is.
    pub fn ptlog_of(size: u64, memory: u64) -> (u64, u64) {
        let page = crate::guest::PAGE_SIZE;
        let capacity = 2 * (memory / page) + 4096;
        (size - (capacity * PTLOG_ENTRY).next_multiple_of(page), capacity)
    }
}

/// Shared memory of a tenant: one memfd mapped by every instance (and every process).
#[derive(Debug)]
pub struct SharedRegion {
    /// The host mapping.
    pub map: Mapping,
}

/// A VM and its vCPU.
///
/// Drop order matters: the vCPU and VM fds close before the memory they point at is unmapped.
pub struct Vm {
    vcpu: VcpuFd,
    vm: VmFd,
    /// Guest RAM (slot 0).
    pub ram: GuestMemory,
    /// The vCPU area (slot 1).
    pub vcpu_area: Mapping,
    /// Tenant shared memory (slot 2).
    pub shared: Option<Arc<SharedRegion>>,
    /// The restore view (slot 3, see [`crate::restore_view`]), kept alive as long as the VM.
    _restore_view: Option<Arc<ReadOnlyMapping>>,
    /// The program's file (slot 4), whose pages the image's read-only pages are.
    pub image: Option<Arc<ReadOnlyMapping>>,
    host: &'static Host,
    dirty_log: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("ram", &self.ram.size()).field("dirty_log", &self.dirty_log).finish()
    }
}

fn region(slot: u32, gpa: u64, (host_address, len): (u64, usize), flags: u32) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: len as u64,
        userspace_addr: host_address,
    }
}

fn segment(selector: u16, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The memory slots a VM may have besides its RAM and its vCPU area.
#[derive(Debug, Default)]
pub struct OptionalSlots {
    /// Tenant shared memory (slot 2).
    pub shared: Option<Arc<SharedRegion>>,
    /// An instance's restore view (slot 3, read-only).
    pub restore_view: Option<Arc<ReadOnlyMapping>>,
    /// A one-shot run's program file (slot 4, read-only).
    pub image: Option<Arc<ReadOnlyMapping>>,
}

impl Vm {
    /// Creates the VM with its memory slots and vCPU, in the state `kernel_start` expects.
    /// With `dirty_log`, slot 0 is logged in manual-protect mode (all pages start clean).
    /// `clock` times the steps.
    pub fn new(
        host: &'static Host,
        ram: GuestMemory,
        vcpu_area: Mapping,
        slots: OptionalSlots,
        dirty_log: bool,
        clock: &mut StepClock,
    ) -> Result<Vm> {
        let OptionalSlots { shared, restore_view, image } = slots;
        let vm = host.kvm().create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        clock.step("VM: KVM_CREATE_VM");
        if dirty_log {
            if !host.manual_dirty_log {
                return Err(Error::MissingCapability("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"));
            }
            let cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                args: [u64::from(kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE), 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap).map_err(Error::kvm("KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)"))?;
        }
        let log = if dirty_log { kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        let regions = [
            Some(region(slot::RAM, 0, (ram.mapping().host_address(), ram.mapping().len()), log)),
            Some(region(slot::VCPU_AREA, GPA_VCPU, (vcpu_area.host_address(), vcpu_area.len()), 0)),
            shared.as_ref().map(|s| region(slot::SHARED, GPA_SHARED, (s.map.host_address(), s.map.len()), 0)),
            restore_view.as_ref().map(|m| {
                region(slot::SNAPSHOT, GPA_SNAPSHOT, (m.host_address(), m.len()), kvm_bindings::KVM_MEM_READONLY)
            }),
            image
                .as_ref()
                .map(|m| region(slot::IMAGE, GPA_IMAGE, (m.host_address(), m.len()), kvm_bindings::KVM_MEM_READONLY)),
        ];
        for r in regions.into_iter().flatten() {
            // SAFETY: each region describes a live host mapping owned by the returned `Vm`
            // (or by an `Arc` it holds), which outlives the VM fd: fields drop in declaration
            // order, fds first.  The slots do not overlap in guest-physical space.
            unsafe { vm.set_user_memory_region(r) }.map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        clock.step("VM: memory slots");
        let mut vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        clock.step("VM: KVM_CREATE_VCPU");
        vcpu.set_cpuid2(&host.cpuid).map_err(Error::kvm("KVM_SET_CPUID2"))?;
        Self::set_system_registers(host, &vcpu)?;
        vcpu.set_sync_valid_reg(SyncReg::Register);
        clock.step("VM: CPUID, system registers");
        Ok(Vm { vcpu, vm, ram, vcpu_area, shared, _restore_view: restore_view, image, host, dirty_log })
    }

    fn set_system_registers(host: &Host, vcpu: &VcpuFd) -> Result<()> {
        let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        sregs.cr0 = CR0_PE_MP_ET_NE_WP_AM_PG;
        sregs.cr3 = GPA_KPML4;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
        if host.cpu.fsgsbase {
            sregs.cr4 |= CR4_FSGSBASE;
        }
        sregs.efer = EFER_SCE_LME_LMA_NXE;
        sregs.cs = segment(SEL_KCODE as u16, true, 0);
        sregs.ss = segment(SEL_KDATA as u16, false, 0);
        let null = kvm_segment { unusable: 1, ..Default::default() };
        (sregs.ds, sregs.es, sregs.fs, sregs.gs) = (null, null, null, null);
        sregs.gdt.base = KBASE + GPA_GDT;
        sregs.gdt.limit = 10 * 8 - 1;
        sregs.idt.base = KBASE + GPA_IDT;
        sregs.idt.limit = 256 * 16 - 1;
        sregs.tr = kvm_segment {
            base: KBASE + GPA_TSS,
            limit: 103,
            selector: SEL_TSS as u16,
            type_: 11,
            present: 1,
            ..Default::default()
        };
        vcpu.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;

        let entries = [
            kvm_msr_entry { index: MSR_STAR, data: (0x23 << 48) | (SEL_KCODE << 32), ..Default::default() },
            kvm_msr_entry { index: MSR_LSTAR, data: sym::SYSCALL_ENTRY, ..Default::default() },
            kvm_msr_entry { index: MSR_SFMASK, data: SFMASK, ..Default::default() },
        ];
        let msrs = Msrs::from_entries(&entries).expect("3 MSRs fit");
        let written = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
        if written != entries.len() {
            return Err(Error::GuestKernel(format!("KVM_SET_MSRS accepted {written} of {} MSRs", entries.len())));
        }
        Self::set_xcr0(host, vcpu)
    }

    /// The XCR0 guests run with: what KVM supports, limited to [`XCR0_ALLOWED`].
    pub fn xcr0(host: &Host) -> u64 {
        let supported = host
            .cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0xd && e.index == 0)
            .map(|e| u64::from(e.eax) | (u64::from(e.edx) << 32))
            .unwrap_or(0b11);
        (supported & XCR0_ALLOWED) | 0b11
    }

    fn set_xcr0(host: &Host, vcpu: &VcpuFd) -> Result<()> {
        let mut xcrs = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = Self::xcr0(host);
        vcpu.set_xcrs(&xcrs).map_err(Error::kvm("KVM_SET_XCRS"))?;
        Ok(())
    }

    /// Loads the start-up system registers again (after the vCPU stopped in user mode or in
    /// an exception handler).
    pub fn reset_system_registers(&self) -> Result<()> {
        Self::set_system_registers(self.host, &self.vcpu)
    }

    /// The host this VM was created on.
    pub fn host(&self) -> &'static Host {
        self.host
    }

    /// The vCPU.
    pub fn vcpu(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }

    /// Guest RAM and the VM fd at once (a reset needs both).
    pub fn ram_and_fd(&mut self) -> (&mut GuestMemory, &VmFd) {
        (&mut self.ram, &self.vm)
    }

    /// Sets all general registers with an ioctl (used before the first run, when the sync
    /// area does not hold the vCPU's registers yet).
    /// Registers changed in the sync area and not yet loaded are dropped: at the next
    /// `KVM_RUN` they would overwrite these.
    pub fn set_regs(&mut self, regs: &kvm_regs) -> Result<()> {
        self.vcpu.set_regs(regs).map_err(Error::kvm("KVM_SET_REGS"))?;
        self.vcpu.get_kvm_run().kvm_dirty_regs &= !u64::from(kvm_bindings::KVM_SYNC_X86_REGS);
        Ok(())
    }

    /// The registers in the sync area (valid after every exit).
    pub fn regs(&mut self) -> &mut kvm_regs {
        &mut self.vcpu.sync_regs_mut().regs
    }

    /// Marks the sync-area registers as changed, so the next `KVM_RUN` loads them.
    pub fn regs_changed(&mut self) {
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
    }

    /// The vCPU's XSAVE image (x87/SSE/AVX state), with an ioctl.
    pub fn xsave(&self) -> Result<Box<[u32; 1024]>> {
        let x = self.vcpu.get_xsave().map_err(Error::kvm("KVM_GET_XSAVE"))?;
        Ok(Box::new(x.region))
    }

    /// Loads an XSAVE image taken by [`Vm::xsave`] on this VM.
    pub fn set_xsave(&self, region: &[u32; 1024]) -> Result<()> {
        let x = kvm_bindings::kvm_xsave { region: *region, ..Default::default() };
        // SAFETY: `x` is a plain kvm_xsave of the legacy 4 KiB size, which is what
        // KVM_SET_XSAVE reads (no trailing flexible array is used: the image came from
        // KVM_GET_XSAVE on this vCPU).
        unsafe { self.vcpu.set_xsave(&x) }.map_err(Error::kvm("KVM_SET_XSAVE"))
    }

    /// FS and GS bases, with an ioctl.
    pub fn segment_bases(&self) -> Result<(u64, u64)> {
        let s = self.vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        Ok((s.fs.base, s.gs.base))
    }

    /// Sets FS and GS bases (an ioctl pair, skipped when they are already right).
    pub fn set_segment_bases(&self, fs: u64, gs: u64) -> Result<()> {
        let mut s = self.vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        if s.fs.base == fs && s.gs.base == gs {
            return Ok(());
        }
        s.fs.base = fs;
        s.gs.base = gs;
        self.vcpu.set_sregs(&s).map_err(Error::kvm("KVM_SET_SREGS"))
    }

    /// Drops any event KVM holds for the vCPU but has not delivered yet: an exception (or
    /// interrupt, NMI) whose delivery a VM exit cut short, which KVM would inject again at
    /// the next `KVM_RUN` into whatever state the registers then describe.  For when the
    /// state it belonged to is put aside or thrown away.  One ioctl, two if there was one.
    pub fn discard_events(&self) -> Result<()> {
        let mut e = self.vcpu.get_vcpu_events().map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?;
        if e.exception.injected == 0 && e.exception.pending == 0 && e.interrupt.injected == 0 && e.nmi.injected == 0 {
            return Ok(());
        }
        e.exception = Default::default();
        e.interrupt = Default::default();
        e.nmi.injected = 0;
        e.nmi.pending = 0;
        // Only the fields above: leave SMI, SIPI and the triple-fault state as they are.
        e.flags = 0;
        self.vcpu.set_vcpu_events(&e).map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))
    }

    /// CR2 (the last page-fault address), read with an ioctl (fault paths only).
    pub fn cr2(&self) -> u64 {
        self.vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0)
    }
}
