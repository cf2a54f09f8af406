//! Tenants: a program booted once to its first `wait_for_request`, frozen into a
//! [`Snapshot`], and served by any number of [`Instance`]s made from it.
//!
//! ```text
//!  Tenant::boot:  fresh VM ──run──> wait_for_request ──(warm-up requests)──> freeze
//!                 freeze = the boot VM's RAM memfd + registers + FPU state + process state
//!  Tenant::instance:  new VM, RAM = MAP_PRIVATE of the snapshot memfd (copy-on-write)
//! ```
//!
//! Instances of one tenant share the snapshot's pages; each pays only for what it writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_regs;

use crate::error::{Error, Failure, Result};
use crate::guest::kernel::sym;
use crate::guest::layout::*;
use crate::guest::{kdata, PAGE_SIZE};
use crate::instance::Instance;
use crate::kvm;
use crate::loader::{self, LoadConfig};
use crate::machine::{Machine, RunEnd};
use crate::memory::user::UserMap;
use crate::memory::{Mapping, Memfd};
use crate::program::{default_stack, exe_path_for, new_process, Program};
use crate::syscalls::api::{ApiLimits, Request};
use crate::syscalls::fs::Io;
use crate::syscalls::process::fill_random;
use crate::syscalls::{Input, Output, Process, Stop};
use crate::vm::{self, SharedRegion, Vm};

/// How a tenant is booted and served.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// argv, including argv[0].
    pub args: Vec<Vec<u8>>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<Vec<u8>>,
    /// Guest RAM in bytes (rounded up to 2 MiB).
    pub memory: u64,
    /// Stack size (default: 8 MiB, at most an eighth of memory).
    pub stack_size: Option<u64>,
    /// Time limit of one request.
    pub timeout: Duration,
    /// Time limit of booting to the snapshot, warm-up included.
    pub boot_timeout: Duration,
    /// Reset after every request (true) or keep state between requests (false).
    pub ephemeral: bool,
    /// Bytes of shared memory mapped at SHARED_VA in every instance (0: none).
    pub shared_memory: u64,
    /// File backing the shared memory, so that several processes share it (None: private
    /// to this process).
    pub shared_path: Option<PathBuf>,
    /// Request and response size limits.
    pub limits: ApiLimits,
    /// Requests served before the snapshot is taken (to warm up JITs, caches).
    pub warmup: Vec<Request>,
    /// Most bytes of stdout/stderr kept per request.
    pub output_limit: usize,
}

impl TenantConfig {
    /// Defaults: 64 MiB, 1 s per request, 10 s boot, ephemeral, no shared memory.
    pub fn new(args: Vec<Vec<u8>>) -> TenantConfig {
        TenantConfig {
            args,
            env: Vec::new(),
            memory: 64 << 20,
            stack_size: None,
            timeout: Duration::from_secs(1),
            boot_timeout: Duration::from_secs(10),
            ephemeral: true,
            shared_memory: 0,
            shared_path: None,
            limits: ApiLimits::default(),
            warmup: Vec::new(),
            output_limit: 64 << 10,
        }
    }
}

/// Why a tenant could not be booted.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A host-side failure.
    #[error(transparent)]
    Host(#[from] Error),
    /// The program ended or failed before its first `wait_for_request`.
    #[error("the tenant failed before its first wait_for_request: {failure}")]
    Guest {
        /// How it failed.
        failure: Failure,
        /// Its stdout up to then.
        stdout: Vec<u8>,
        /// Its stderr up to then.
        stderr: Vec<u8>,
    },
}

/// The frozen state instances start from.  Immutable once made.
#[derive(Debug)]
pub struct Snapshot {
    /// RAM contents.
    pub ram: Arc<Memfd>,
    /// Read-only view of `ram`: the source of host resets.
    pub ram_view: Arc<Mapping>,
    /// What in-guest resets copy back (slot 3 of every instance, see [`crate::restore_view`]).
    pub restore_view: Arc<Mapping>,
    /// Registers at the freeze (rip = the kernel's reset entry).
    pub regs: kvm_regs,
    /// The emulated process at the freeze.
    pub proc: Process,
    /// The address space.
    pub map: UserMap,
    /// Shared memory, if any.
    pub shared: Option<Arc<SharedRegion>>,
    /// Size of the request area.
    pub request_area: u64,
    /// The tenant's configuration.
    pub config: TenantConfig,
    /// Time to boot (and warm up) to the freeze.
    pub boot_time: Duration,
    /// Pages of RAM that hold data (written during boot).
    pub resident_pages: u64,
}

/// A booted tenant: makes instances.
#[derive(Debug, Clone)]
pub struct Tenant {
    snapshot: Arc<Snapshot>,
}

fn shared_region(cfg: &TenantConfig) -> Result<Option<Arc<SharedRegion>>> {
    if cfg.shared_memory == 0 {
        return Ok(None);
    }
    let size = cfg.shared_memory.next_multiple_of(PAGE_SIZE);
    let file = match &cfg.shared_path {
        None => Memfd::new("tenantvm-shared", size)?,
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|source| Error::Os { op: "opening the shared-memory file", source })?;
            if f.metadata().map(|m| m.len()).unwrap_or(0) < size {
                f.set_len(size).map_err(|source| Error::Os { op: "sizing the shared-memory file", source })?;
            }
            Memfd::from_fd(f.into())?
        }
    };
    Ok(Some(Arc::new(SharedRegion { map: Mapping::shared(&file, size as usize, true)? })))
}

impl Tenant {
    /// Boots `program` to its first `wait_for_request`, runs the warm-up requests, and
    /// freezes it.
    pub fn boot(program: &Program, cfg: TenantConfig) -> Result<Tenant, BootError> {
        let started = Instant::now();
        let deadline = started + cfg.boot_timeout;
        let host = kvm::host()?;
        let memory = cfg.memory.next_multiple_of(crate::guest::LARGE_PAGE_SIZE);
        let stack = cfg.stack_size.unwrap_or_else(|| default_stack(memory)).next_multiple_of(PAGE_SIZE);
        let request_area = (cfg.limits.max_request as u64).next_multiple_of(PAGE_SIZE);
        let shared = shared_region(&cfg)?;
        let exe = exe_path_for(cfg.args.first().map(Vec::as_slice));
        let mut random = [0u8; 16];
        fill_random(&mut random);
        let load_cfg = LoadConfig {
            memory,
            stack_size: stack,
            args: &cfg.args,
            env: &cfg.env,
            execfn: cfg.args.first().map(Vec::as_slice).unwrap_or(&exe),
            request_area,
            shared_size: shared.as_ref().map_or(0, |s| s.map.len() as u64),
            fast_syscalls: true,
            random,
        };
        let loaded = loader::load(host, program.image(), program.bytes(), &load_cfg)?;
        let vcpu_area = Mapping::anonymous(vm::VcpuAreaLayout::new(request_area, memory).size as usize)?;
        let vm = Vm::new(host, loaded.ram, vcpu_area, shared.clone(), None, false)?;
        let proc = new_process(loaded.mem_state, exe, stack, memory);
        let io = Io {
            stdin: Input::Bytes { data: Vec::new(), pos: 0 },
            stdout: Output::capture(cfg.output_limit),
            stderr: Output::capture(cfg.output_limit),
        };
        let mut m = Machine::new(vm, loaded.map, proc, io, Some(cfg.limits));
        m.start_kernel()?;
        m.enter_user(loaded.entry, loaded.rsp);

        let fail = |m: &Machine, end: RunEnd| BootError::Guest {
            failure: end.failure(m.memory_exhausted, cfg.boot_timeout, cfg.memory),
            stdout: m.io.stdout.captured().to_vec(),
            stderr: m.io.stderr.captured().to_vec(),
        };
        let mut warmups = cfg.warmup.iter();
        loop {
            match m.run(deadline)? {
                RunEnd::Stopped(Stop::WaitForRequest | Stop::RespondedAndWaiting(_)) => {}
                RunEnd::Stopped(Stop::Responded(_)) => continue,
                end => return Err(fail(&m, end)),
            }
            let Some(req) = warmups.next() else { break };
            let mut entropy = [0u8; 32];
            fill_random(&mut entropy);
            let bytes = crate::syscalls::api::encode_request(req, &entropy, request_area as usize)
                .map_err(|e| Error::Config(format!("warm-up request: {e}")))?;
            m.vm.vcpu_area.write(VC_REQUEST, &bytes);
        }
        let snapshot = freeze(m, shared, request_area, cfg, started.elapsed())?;
        Ok(Tenant { snapshot: Arc::new(snapshot) })
    }

    /// A new instance, at the snapshot's state.
    pub fn instance(&self) -> Result<Instance> {
        Instance::new(self.snapshot.clone())
    }

    /// The snapshot.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }
}

/// Captures the stopped boot machine as a snapshot.  The vCPU is at the `wait_for_request`
/// exit, in the guest kernel's forward path: its registers are the program's (rcx/r11 hold
/// the user rip/rflags), so an instance resumes by loading them with rip = reset_entry,
/// which also reloads the FPU state and segment bases saved into KDATA here.
fn freeze(
    mut m: Machine,
    shared: Option<Arc<SharedRegion>>,
    request_area: u64,
    cfg: TenantConfig,
    boot_time: Duration,
) -> Result<Snapshot> {
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
    let nreset = m.vm.ram.read_u64(kdata(KD_NRESET)).map_err(oob)?;
    let ram_offset = m.vm.ram.read_u64(kdata(KD_RAM_OFFSET)).map_err(oob)?;
    let mut writable = Vec::new();
    for i in 0..nreset.min(KD_MAX_RESET) {
        let lo = m.vm.ram.read_u64(kdata(KD_RESET) + 16 * i).map_err(oob)?;
        let hi = m.vm.ram.read_u64(kdata(KD_RESET) + 16 * i + 8).map_err(oob)?;
        crate::paging::PageTables::clear_dirty(&mut m.vm.ram, GPA_KPML4, lo, hi).map_err(oob)?;
        writable.push((lo.wrapping_sub(ram_offset), hi.wrapping_sub(ram_offset)));
    }
    let ram = m.vm.ram.file().clone();
    let ram_view = Arc::new(Mapping::shared(&ram, ram.size() as usize, false)?);
    let residency = residency(&ram_view);
    let resident_pages = residency.as_ref().map_or(0, |r| r.iter().filter(|&&b| b & 1 != 0).count() as u64);
    let resident = |page: u64| residency.as_ref().is_none_or(|r| r.get(page as usize).is_some_and(|&b| b & 1 != 0));
    let restore_view = Arc::new(crate::restore_view::build(&ram_view, &writable, resident)?.map);
    Ok(Snapshot {
        ram,
        ram_view,
        restore_view,
        regs,
        proc: m.proc.clone(),
        map: m.map.clone(),
        shared,
        request_area,
        config: cfg,
        boot_time,
        resident_pages,
    })
}

/// Which pages of a shared mapping are backed by memory (mincore: bit 0 of each byte).
fn residency(view: &Mapping) -> Option<Vec<u8>> {
    let mut vec = vec![0u8; view.len() / PAGE_SIZE as usize];
    view.residency(&mut vec).ok().map(|()| vec)
}
