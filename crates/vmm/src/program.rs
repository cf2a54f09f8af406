//! Programs and how they boot: a validated executable ([`Program`]), the one boot path that
//! loads it into a fresh VM ([`boot`], used by one-shot runs and by tenants), and the one-shot
//! API that runs it to completion ([`run`]).
//!
//! ```no_run
//! let program = vmm::Program::from_file("apps/build/hello.glibc").unwrap();
//! let outcome = vmm::run(&program, vmm::RunConfig::new(vec![b"hello".to_vec()])).unwrap();
//! assert_eq!(outcome.stdout, b"Hello, world!\n");
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::elf::ElfImage;
use crate::error::{Error, Failure, GuestFault, Result};
use crate::guest::PAGE_SIZE;
use crate::host::fill_random;
use crate::kvm;
use crate::linux::{FsConfig, View};
use crate::loader::{self, LoadConfig};
use crate::machine::{Machine, RunEnd};
use crate::memory::{Mapping, Memfd, ReadOnlyMapping};
use crate::syscalls::api::ApiLimits;
use crate::syscalls::fs::Io;
use crate::syscalls::process::Identity;
use crate::syscalls::signal::SignalState;
use crate::syscalls::{Input, Output, Process, Stop, SyscallCounts};
use crate::vm::{self, SharedRegion, Vm};

/// A validated executable, ready to be loaded any number of times.
#[derive(Debug, Clone)]
pub struct Program {
    image: ElfImage,
    bytes: Arc<[u8]>,
    interpreter: Option<Arc<Interpreter>>,
    path: Option<PathBuf>,
    /// The file mapped read-only (programs read from a file): one-shot runs map its read-only
    /// pages into the guest from here rather than copying them ([`loader::file_pages`]).
    file: Option<Arc<ReadOnlyMapping>>,
}

/// The dynamic linker of a dynamically linked program, read from the host when the program
/// is loaded and placed right after the program's image.
#[derive(Debug)]
pub struct Interpreter {
    /// Its path (from `PT_INTERP`), visible to the program at the same path.
    pub path: String,
    /// Parsed, relocated to its load address.
    pub image: ElfImage,
    /// Its file.
    pub bytes: Arc<[u8]>,
}

impl Program {
    /// Validates an executable held in memory (and reads its dynamic linker, if it has one).
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Result<Program> {
        let bytes = bytes.into();
        let image = ElfImage::parse(&bytes)?;
        let interpreter = match &image.interpreter {
            None => None,
            Some(path) => {
                let file: Arc<[u8]> = std::fs::read(path)
                    .map_err(|source| Error::Os { op: "reading the program's interpreter (PT_INTERP)", source })?
                    .into();
                let interp = ElfImage::parse_interpreter(&file, image.end)?;
                Some(Arc::new(Interpreter { path: path.clone(), image: interp, bytes: file }))
            }
        };
        Ok(Program { image, bytes, interpreter, path: None, file: None })
    }

    /// Reads and validates an executable file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Program> {
        let file =
            std::fs::File::open(path.as_ref()).map_err(|source| Error::Os { op: "reading the program", source })?;
        let bytes = std::fs::read(path.as_ref()).map_err(|source| Error::Os { op: "reading the program", source })?;
        let whole_pages = (bytes.len() as u64) / PAGE_SIZE * PAGE_SIZE;
        let mut p = Program::from_bytes(bytes)?;
        // The pages the guest may see directly are the whole pages of the file as it was read
        // (a file that changed size in between is copied, as a file that has no whole page).
        let same_size = file.metadata().is_ok_and(|m| m.len() / PAGE_SIZE * PAGE_SIZE == whole_pages);
        if whole_pages > 0 && same_size {
            let range = Memfd::from_file_range(file.into(), 0, whole_pages)?;
            p.file = Some(Arc::new(ReadOnlyMapping::of(&range, whole_pages as usize)?));
        }
        // /proc/self/exe names the real file, as on Linux.
        p.path = std::fs::canonicalize(path.as_ref()).or_else(|_| std::path::absolute(path.as_ref())).ok();
        Ok(p)
    }

    /// The dynamic linker, for a dynamically linked program.
    pub fn interpreter(&self) -> Option<&Interpreter> {
        self.interpreter.as_deref()
    }

    /// The file-system view for this program: what the operator allows, plus, for a
    /// dynamically linked program, the program itself, its interpreter and the library
    /// directories ld.so searches (those that exist).
    pub fn view(&self, fs: &FsConfig) -> Result<Arc<View>> {
        let mut cfg = fs.clone();
        if let Some(interp) = &self.interpreter {
            let defaults = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache"];
            // The program itself, unless it lives where the guest has its own files (/tmp).
            let own = |p: &&PathBuf| !crate::linux::view::is_reserved(&p.to_string_lossy());
            let mut extra: Vec<PathBuf> = self.path.iter().filter(own).cloned().collect();
            extra.push(PathBuf::from(&interp.path));
            extra.extend(defaults.iter().map(PathBuf::from).filter(|p| p.exists()));
            extra.retain(|p| !cfg.allow_read.contains(p));
            cfg.allow_read.splice(0..0, extra);
        }
        View::new(&cfg).map(Arc::new).map_err(|e| Error::Config(format!("file system view: {e}")))
    }

    /// What `/proc/self/exe` names by default: a dynamically linked program's real path
    /// (visible at the same path), else [`exe_path_for`] of argv[0].
    pub fn exe_path(&self, argv0: Option<&[u8]>) -> Vec<u8> {
        match (&self.interpreter, &self.path) {
            (Some(_), Some(p)) => p.as_os_str().as_encoded_bytes().to_vec(),
            _ => exe_path_for(argv0),
        }
    }

    /// The interpreter's parts for the loader.
    pub(crate) fn interpreter_parts(&self) -> Option<(&ElfImage, &[u8])> {
        self.interpreter.as_deref().map(|i| (&i.image, &i.bytes[..]))
    }

    /// The parsed image.
    pub fn image(&self) -> &ElfImage {
        &self.image
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file, mapped read-only (a program read from a file).
    pub(crate) fn file(&self) -> Option<&Arc<ReadOnlyMapping>> {
        self.file.as_ref()
    }
}

/// How to run a program.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// argv, including `argv[0]`.
    pub args: Vec<Vec<u8>>,
    /// Environment entries, `KEY=VALUE`.
    pub env: Vec<Vec<u8>>,
    /// Where stdin comes from.
    pub stdin: Input,
    /// Where stdout goes.
    pub stdout: Output,
    /// Where stderr goes.
    pub stderr: Output,
    /// Wall-clock limit for the whole run, boot included.
    pub timeout: Duration,
    /// Guest RAM in bytes (rounded up to 2 MiB).
    pub memory: u64,
    /// Stack size; default: 8 MiB, at most an eighth of memory.
    pub stack_size: Option<u64>,
    /// What `readlink("/proc/self/exe")` returns; default: `argv[0]` if absolute, else `/app/<its basename>`.
    pub exe_path: Option<Vec<u8>>,
    /// Let the guest kernel answer cheap system calls without exiting (default true).
    pub fast_syscalls: bool,
    /// What the program sees of the host's files, and the size of its /tmp.
    pub fs: FsConfig,
}

/// Default captured output limit per stream.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 << 20;

impl RunConfig {
    /// Defaults: no env, empty stdin, captured output, 10 s, 64 MiB.
    pub fn new(args: Vec<Vec<u8>>) -> RunConfig {
        RunConfig {
            args,
            env: Vec::new(),
            stdin: Input::Bytes { data: Vec::new(), pos: 0 },
            stdout: Output::capture(DEFAULT_OUTPUT_LIMIT),
            stderr: Output::capture(DEFAULT_OUTPUT_LIMIT),
            timeout: Duration::from_secs(10),
            memory: 64 << 20,
            stack_size: None,
            exe_path: None,
            fast_syscalls: true,
            fs: FsConfig { tmp_bytes: crate::linux::view::DEFAULT_TMP_BYTES, ..FsConfig::default() },
        }
    }
}

/// The end of a run as the program's user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitKind {
    /// exit(code).
    Exited(i32),
    /// Ended by a signal it raised itself (abort(), raise()).
    Signaled(i32),
    /// A CPU exception or a misused API call.
    Fault(GuestFault),
    /// Ran past its time limit.
    Timeout,
    /// Would have waited forever (e.g. a futex with no other thread).
    Deadlock(&'static str),
    /// Called the request API outside a tenant, or stopped in an unexpected way.
    Unexpected(String),
}

impl From<RunEnd> for ExitKind {
    fn from(end: RunEnd) -> ExitKind {
        match end {
            RunEnd::Stopped(Stop::Exited(code)) => ExitKind::Exited(code),
            RunEnd::Stopped(Stop::Signaled(sig)) => ExitKind::Signaled(sig),
            RunEnd::Stopped(Stop::Timeout) | RunEnd::Timeout => ExitKind::Timeout,
            RunEnd::Stopped(Stop::Deadlock(why)) => ExitKind::Deadlock(why),
            RunEnd::Stopped(Stop::ApiFault(f)) | RunEnd::Fault(f) => ExitKind::Fault(f),
            RunEnd::Stopped(other) => ExitKind::Unexpected(format!("{other:?}")),
        }
    }
}

/// Result of [`run`].
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How it ended.
    pub exit: ExitKind,
    /// Captured stdout (empty when not captured).
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Whether output beyond the capture limit was dropped.
    pub output_truncated: bool,
    /// System calls, by number.
    pub syscalls: SyscallCounts,
    /// Wall time from VM creation to the end.
    pub elapsed: Duration,
    /// VM exits (returns from KVM_RUN).
    pub exits: u64,
    /// Whether a memory request was refused because the VM's memory was exhausted.
    pub memory_exhausted: bool,
    /// Why the run failed, unless the program exited (or killed itself) normally.
    pub failure: Option<Failure>,
}

impl RunOutcome {
    /// True when the program ended abnormally after running out of memory: the cap, not a
    /// bug, is the likely cause.
    pub fn out_of_memory(&self) -> bool {
        matches!(self.failure, Some(Failure::OutOfMemory { .. }))
    }
}

/// What `/proc/self/exe` names when not configured: argv[0] if absolute, else
/// `/app/<basename of argv[0]>` (C libraries insist that it is absolute).
pub fn exe_path_for(argv0: Option<&[u8]>) -> Vec<u8> {
    let argv0 = argv0.unwrap_or(b"program");
    if argv0.starts_with(b"/") {
        return argv0.to_vec();
    }
    let base = argv0.rsplit(|&b| b == b'/').next().filter(|b| !b.is_empty()).unwrap_or(b"program");
    [&b"/app/"[..], base].concat()
}

/// Stack size for `memory` bytes of RAM unless configured.
pub fn default_stack(memory: u64) -> u64 {
    (memory / 8).clamp(128 << 10, 8 << 20) / PAGE_SIZE * PAGE_SIZE
}

/// Builds the emulated process for a loaded program.
fn new_process(
    mem: crate::syscalls::mem::MemoryState,
    exe: Vec<u8>,
    stack: u64,
    memory: u64,
    view: Arc<View>,
) -> Process {
    Process {
        mem,
        files: crate::linux::Files::new(view),
        signals: SignalState::default(),
        identity: Identity {
            pid: loader::PID,
            ppid: loader::PPID,
            uid: loader::UID,
            gid: loader::UID,
            exe,
            stack_limit: stack,
            memory_limit: memory,
            name: [0; 16],
        },
        threads: crate::linux::threads::Threads::new(loader::PID),
    }
}

/// Empty stdin, stdout and stderr captured up to `limit` bytes each: the I/O of tenants.
pub(crate) fn captured_io(limit: usize) -> Io {
    Io {
        stdin: Input::Bytes { data: Vec::new(), pos: 0 },
        stdout: Output::capture(limit),
        stderr: Output::capture(limit),
    }
}

/// What [`boot`] needs besides the program.
pub(crate) struct BootSpec<'a> {
    /// argv, including argv[0].
    pub args: &'a [Vec<u8>],
    /// Environment, `KEY=VALUE`.
    pub env: &'a [Vec<u8>],
    /// Guest RAM in bytes (rounded up to 2 MiB here).
    pub memory: u64,
    /// Stack size; default from [`default_stack`].
    pub stack_size: Option<u64>,
    /// What `/proc/self/exe` names; default from [`exe_path_for`].
    pub exe_path: Option<Vec<u8>>,
    /// Bytes of the request area (0: not a tenant).
    pub request_area: u64,
    /// Shared memory mapped into the guest, if any.
    pub shared: Option<Arc<SharedRegion>>,
    /// Let the guest kernel answer cheap system calls without exiting.
    pub fast_syscalls: bool,
    /// stdin, stdout and stderr.
    pub io: Io,
    /// Request and response limits (tenants only).
    pub limits: Option<ApiLimits>,
    /// What the program sees of the host's files, and the size of its /tmp.
    pub fs: &'a FsConfig,
    /// Map the read-only pages of the program's file into the guest instead of copying them
    /// (slot 4).  One-shot runs only: a snapshot holds its RAM only, and an instance has no
    /// slot 4.
    pub file_pages: bool,
}

/// Loads `program` into a fresh VM and leaves the vCPU at the program's entry point: the one
/// boot path of one-shot runs and tenants.
pub(crate) fn boot(program: &Program, spec: BootSpec<'_>) -> Result<Machine> {
    let host = kvm::host()?;
    let memory = spec.memory.next_multiple_of(crate::guest::LARGE_PAGE_SIZE);
    let stack = spec.stack_size.unwrap_or_else(|| default_stack(memory)).next_multiple_of(PAGE_SIZE);
    let exe = spec.exe_path.unwrap_or_else(|| program.exe_path(spec.args.first().map(Vec::as_slice)));
    let view = program.view(spec.fs)?;
    let mut random = [0u8; 16];
    fill_random(&mut random);
    let load_cfg = LoadConfig {
        memory,
        stack_size: stack,
        args: spec.args,
        env: spec.env,
        execfn: spec.args.first().map(Vec::as_slice).unwrap_or(&exe),
        request_area: spec.request_area,
        shared_size: spec.shared.as_ref().map_or(0, |s| s.map.len() as u64),
        fast_syscalls: spec.fast_syscalls,
        random,
        interpreter: program.interpreter_parts(),
        exec_arena: program.interpreter().is_some(),
        file: if spec.file_pages { program.file().map(|f| &**f) } else { None },
    };
    let loaded = loader::load(host, program.image(), program.bytes(), &load_cfg)?;
    let image = if loaded.file_pages > 0 { program.file().cloned() } else { None };
    let slots = vm::OptionalSlots { shared: spec.shared, restore_view: None, image };
    let vcpu_area = Mapping::anonymous(vm::VcpuAreaLayout::new(spec.request_area, memory).size as usize)?;
    let vm = Vm::new(host, loaded.ram, vcpu_area, slots, false, &mut crate::steps::StepClock::start())?;
    let proc = new_process(loaded.mem_state, exe, stack, memory, view);
    let mut machine = Machine::new(vm, loaded.map, proc, spec.io, spec.limits);
    machine.start_kernel()?;
    machine.enter_user(loaded.entry, loaded.rsp);
    Ok(machine)
}

/// Runs `program` in a fresh VM until it exits, faults or times out.
///
/// Errors are host-side problems (no KVM, the program does not fit, bad configuration); what
/// the program does is reported in [`RunOutcome::exit`].
pub fn run(program: &Program, cfg: RunConfig) -> Result<RunOutcome> {
    let started = Instant::now();
    let deadline = started.checked_add(cfg.timeout).ok_or_else(|| Error::Config("timeout too large".into()))?;
    let spec = BootSpec {
        args: &cfg.args,
        env: &cfg.env,
        memory: cfg.memory,
        stack_size: cfg.stack_size,
        exe_path: cfg.exe_path,
        request_area: 0,
        shared: None,
        fast_syscalls: cfg.fast_syscalls,
        io: Io { stdin: cfg.stdin, stdout: cfg.stdout, stderr: cfg.stderr },
        limits: None,
        fs: &cfg.fs,
        file_pages: true,
    };
    let mut machine = boot(program, spec)?;
    let end = machine.run(deadline)?;
    let oom = machine.memory_exhausted;
    let failure = match &end {
        RunEnd::Stopped(Stop::Exited(0)) => None,
        RunEnd::Stopped(Stop::Exited(_) | Stop::Signaled(_)) if !oom => None,
        end => Some(end.clone().failure(oom, cfg.timeout, cfg.memory)),
    };
    let exit = ExitKind::from(end);
    let truncated =
        [&machine.io.stdout, &machine.io.stderr].iter().any(|o| matches!(o, Output::Capture { truncated: true, .. }));
    Ok(RunOutcome {
        exit,
        stdout: machine.io.stdout.captured().to_vec(),
        stderr: machine.io.stderr.captured().to_vec(),
        output_truncated: truncated,
        syscalls: machine.syscall_counts(),
        elapsed: started.elapsed(),
        exits: machine.stats.exits,
        memory_exhausted: oom,
        failure,
    })
}

#[cfg(test)]
mod tests {
    //! Tests of `machine::sched` that need a booted program (hence here).  An exception KVM
    //! still holds when the VMM puts the vCPU's state aside must never reach another thread,
    //! nor the restarted guest kernel.  The cut-short delivery is made
    //! with KVM_SET_VCPU_EVENTS (a #PF, error code 6, as a user write to address 0 raises),
    //! which is what KVM reports after a timer interrupted a real one.

    use std::time::{Duration, Instant};

    use super::*;
    use crate::machine::sched::in_user_mode;
    use crate::machine::RunEnd;

    fn apps() -> std::path::PathBuf {
        match std::env::var_os("TENANTVM_APPS") {
            Some(d) => d.into(),
            None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../apps/build"),
        }
    }

    fn machine(args: &[&str]) -> Machine {
        let program = Program::from_file(apps().join(args[0])).expect("make -C apps");
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        let fs = crate::FsConfig::default();
        let spec = BootSpec {
            args: &args,
            env: &[],
            memory: 64 << 20,
            stack_size: None,
            exe_path: None,
            request_area: 0,
            shared: None,
            fast_syscalls: true,
            io: captured_io(1 << 16),
            limits: None,
            fs: &fs,
            file_pages: true,
        };
        boot(&program, spec).unwrap()
    }

    fn inject_page_fault(m: &mut Machine) {
        let mut e = m.vm.vcpu().get_vcpu_events().unwrap();
        e.exception.injected = 1;
        e.exception.nr = 14;
        e.exception.has_error_code = 1;
        e.exception.error_code = 6;
        e.flags = 0;
        m.vm.vcpu().set_vcpu_events(&e).unwrap();
    }

    #[test]
    #[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
    fn an_exception_in_flight_at_a_time_slice_stays_with_its_thread() {
        // Main faults and recovers (SIGSEGV handler) while a second thread waits in futex;
        // the handler counts signals that reach the waiter.
        let mut m = machine(&["signals.glibc", "parked", "100", "3"]);
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 10_000, "never stopped in main's user code with the waiter alive");
            let end = m.run(Instant::now() + Duration::from_millis(1)).unwrap();
            assert_eq!(end, RunEnd::Timeout, "the program ended before the test could act");
            let t = &m.proc.threads;
            if t.count() == 2 && t.current().tid == m.proc.identity.pid && in_user_mode(m.vm.regs().rip) {
                break;
            }
        }
        // The waiter's 1 ms wait is over; main's slice ends with a fault in delivery.
        m.proc.threads.wake_expired(Instant::now() + Duration::from_secs(1));
        assert!(m.proc.threads.others_runnable());
        inject_page_fault(&mut m);
        let deadline = Instant::now() + Duration::from_secs(60);
        assert_eq!(m.preempt(deadline).unwrap(), None);
        assert_ne!(m.proc.threads.current().tid, m.proc.identity.pid, "the slice moved the vCPU to the waiter");
        let end = m.run(deadline).unwrap();
        assert_eq!(end, RunEnd::Stopped(crate::syscalls::Stop::Exited(0)));
        assert_eq!(
            String::from_utf8_lossy(m.io.stdout.captured()),
            "parked: faults>=100:1 waiter-ran>=3:1 signals-on-the-waiter=0\n"
        );
    }

    #[test]
    #[cfg_attr(tenantvm_no_kvm, ignore = "no usable /dev/kvm")]
    fn a_restart_of_the_guest_kernel_drops_an_exception_in_flight() {
        // As after a run that ended at its deadline in the middle of a fault's delivery.
        let mut m = machine(&["hello.glibc"]);
        let entry = *m.vm.regs();
        inject_page_fault(&mut m);
        m.restart_kernel().unwrap();
        *m.vm.regs() = entry;
        m.vm.regs_changed();
        let end = m.run(Instant::now() + Duration::from_secs(30)).unwrap();
        assert_eq!(end, RunEnd::Stopped(crate::syscalls::Stop::Exited(0)));
    }
}
