/*
 * Guest memory layout and guest-kernel ABI, shared by the guest kernel (kernel.S, kernel.c)
 * and the VMM.  build.rs turns every `#define NAME VALUE` line below into a Rust constant in
 * `vmm::guest::layout`, so this file is the single source of truth.  Values must be plain
 * integer literals (no expressions), one per line.
 *
 * Guest-physical memory (GPA):
 *
 *   slot 0  "guest RAM" (memory_mb, snapshotted, dirty-logged in instances)
 *   0x0000_0000 +----------------------------+
 *               | kernel PML4        0x00000 |  CR3
 *               | user PML4          0x01000 |  PVM only: CR3|0x1000, lower half only
 *               | GDT                0x02000 |
 *               | IDT                0x03000 |
 *               | TSS                0x04000 |
 *               | KDATA              0x05000 |  kernel variables the host sets at boot/freeze
 *               | fast-syscall table 0x06000 |  512 handler addresses (host-written)
 *               | fast-syscall value 0x07000 |  512 constant results (host-written)
 *               | XSAVE snapshot     0x08000 |  16 KiB, FPU/SSE/AVX state restored on reset
 *               | kernel code        0x10000 |  64 KiB, read-only + executable
 *               | page-table pool    0x20000 |  grows up; kernel area ends 2 MiB aligned
 *   user_base   +----------------------------+
 *               | program image, arena: brk grows up, mmap grows down, guard, stack
 *   memory_mb   +----------------------------+
 *
 *   slot 1  "vCPU area" at GPA_VCPU (per VM: never snapshotted, never dirty-logged)
 *               | VIF page           0x00000 |  PVM per-vCPU page (the hypervisor writes it)
 *               | VCD                0x01000 |  clock anchor, scratch, entropy pool
 *               | counters           0x02000 |  in-guest syscall counts, 512 x u64
 *               | VC_BATCH           0x03000 |  batch control block and response records
 *               | kernel stack       0x04000 |  .. 0x08000 (top)
 *               | exception stack    0x08000 |  .. 0x0c000 (top, IST1 on hardware KVM)
 *               | trampoline         0x0c000 |  user r-x at TRAMPOLINE_VA: resumes a preempted thread
 *               | request area       0x10000 |  mapped read-only at REQUEST_VA for the program
 *               | response area              |  1 MiB, page aligned after the request area:
 *               |                            |  batched responses, copied out by the kernel
 *               | staging area               |  as large as the request area, kernel only: a
 *               |                            |  batch's requests, copied into the request
 *               |                            |  area one at a time by the kernel
 *               | streak counters            |  one byte per page of RAM (hot-page detection)
 *               (offsets past the request area: vmm::vm::VcpuAreaLayout)
 *
 *   slot 2  tenant shared memory at GPA_SHARED (MAP_SHARED, never reset), RW at SHARED_VA
 *
 *   slot 3  the tenant's restore view at GPA_SNAPSHOT (instances only, read-only), mapped
 *           at KSNAP: the source of the guest kernel's own resets between batched requests.
 *           A u32 per page of RAM (0: the page was zero at the snapshot, else the view page
 *           holding its snapshot contents), then those pages (vmm::restore_view)
 *
 *   slot 4  the program's file at GPA_IMAGE (one-shot runs only, read-only): the pages of
 *           its read-only segments that are whole pages of the file point here instead of
 *           being copied into RAM (vmm::loader::file_pages)
 *
 * Virtual addresses: the kernel lives in the top 2 GiB (KBASE + GPA for slot 0's kernel
 * area, KVCPU + offset for slot 1), reachable with 32-bit sign-extended absolute addressing.
 * The program's memory is one linear window VA = GPA + offset in the lower half.
 */
#ifndef TENANTVM_GUEST_LAYOUT_H
#define TENANTVM_GUEST_LAYOUT_H

#define KBASE 0xffffffff80000000
#define KVCPU 0xffffffffc0000000

#define GPA_KPML4 0x0
#define GPA_UPML4 0x1000
#define GPA_GDT 0x2000
#define GPA_IDT 0x3000
#define GPA_TSS 0x4000
#define GPA_KDATA 0x5000
#define GPA_FAST_TABLE 0x6000
#define GPA_FAST_VALUE 0x7000
#define GPA_XSAVE 0x8000
#define XSAVE_SIZE 0x4000
#define GPA_KCODE 0x10000
#define KCODE_SIZE 0x10000
#define GPA_PT_POOL 0x20000

/* KDATA fields (byte offsets from GPA_KDATA) */
#define KD_PVM 0x0
#define KD_FSGSBASE 0x8
#define KD_SNAP_FS 0x10
#define KD_SNAP_GS 0x18
#define KD_NWRANGES 0x20
#define KD_WRANGES 0x40
#define KD_MAX_WRANGES 8
/* In-guest reset (batched requests): the snapshot's registers, in kvm_regs order (rax rbx rcx
   rdx rsi rdi rsp rbp r8 .. r15 rip rflags), VA - GPA of the program's RAM, and the RAM-backed
   writable ranges to reset ([lo, hi) pairs, page aligned, mapped with 4 KiB pages) */
#define KD_SNAP_REGS 0x100
#define KD_RAM_OFFSET 0x1a0
#define KD_NRESET 0x1a8
#define KD_RESET 0x1b0
#define KD_MAX_RESET 8
/* Readable user ranges ([lo, hi) pairs) for copying responses out */
#define KD_NRRANGES 0x240
#define KD_RRANGES 0x250
#define KD_MAX_RRANGES 16
/* The page pool (vmm::pages): RAM pages handed out on demand for the program's
   memory and its page tables, by the guest kernel's page-fault handler and by the VMM.
   NEXT: first never-used page (GPA), END: end of the pool, FREE: a list of freed pages (each
   holds the GPA of the next, 0 ends it), USED: pages handed out, LIMIT: most pages that may
   be handed out (the pool less /tmp's share of the memory cap).  SNAP_*: the same at the
   snapshot, put back by reset_entry (KDATA is not restored by the VMM's reset). */
#define KD_POOL_NEXT 0x380
#define KD_POOL_END 0x388
#define KD_POOL_FREE 0x390
#define KD_POOL_USED 0x398
#define KD_POOL_LIMIT 0x3a0
#define KD_SNAP_POOL 0x3c0
#define KD_POOL_START 0x3e8
#define KD_RAM_SIZE 0x3f0

/* slot 1: the vCPU area */
#define GPA_VCPU 0x1000000000
#define VC_VIF 0x0
#define VC_DATA 0x1000
#define VC_COUNTS 0x2000
#define VC_BATCH 0x3000
#define VC_KSTACK_TOP 0x8000
#define VC_ISTACK_TOP 0xc000
/* The thread-switch trampoline page (code + slots), user r-x at TRAMPOLINE_VA (vmm::sched) */
#define VC_TRAMPOLINE 0xc000
#define VC_REQUEST 0x10000

/* VCD fields (byte offsets from VC_DATA) */
#define VCD_CLOCK_OK 0x0
#define VCD_TSC_BASE 0x8
#define VCD_TSC_MULT 0x10
#define VCD_TSC_SHIFT 0x18
#define VCD_MONO_BASE 0x20
#define VCD_REAL_BASE 0x28
#define VCD_USER_RSP 0x40
#define VCD_SAVE_RAX 0x48
#define VCD_SAVE_RDX 0x50
#define VCD_CODE 0x58
#define VCD_NEXT_RAX 0x60
#define VCD_ENTROPY_POS 0x80
#define VCD_ENTROPY 0x100
#define VCD_ENTROPY_SIZE 0x100
/* The page-table change log (vmm::pages): entries of PTLOG_ENTRY bytes (physmap
   address of the entry, a virtual address it maps, its value before the change) at
   VCD_PTLOG_OFF in the vCPU area.  Entries [DONE, COUNT) were changed by the VMM and are
   written again by the guest kernel before it returns to the program (so that the shadow
   MMU sees them); all entries are undone, newest first, at reset_entry. */
#define VCD_PTLOG_COUNT 0x200
#define VCD_PTLOG_DONE 0x208
#define VCD_PTLOG_CAP 0x210
#define VCD_PTLOG_OFF 0x218
#define VCD_PTLOG_RSP 0x220
#define VCD_PTLOG_SAVE 0x228
#define PTLOG_ENTRY 24
/* Set in a log entry's virtual address (bit 0: invlpg ignores it) when the change linked a table
   (PVM: the reset makes the shadow MMU forget that table, see sync_ptes in kernel.c) */
#define PTLOG_LINKS_TABLE 1
/* Bit 1: an entry the VMM's reset filtered out (it lay in a table the request made, which the VMM
   restores): nothing to undo, only the table whose frame is in the old-value field to forget */
#define PTLOG_FORGET_ONLY 2

/* VC_BATCH fields: a batch of requests served in one KVM_RUN, reset in the guest between them */
#define VB_ACTIVE 0x0
#define VB_COUNT 0x8
#define VB_NEXT 0x10
#define VB_HOST_TOUCHED 0x18
#define VB_RESP_OFF 0x20
#define VB_RESP_SIZE 0x28
#define VB_RESP_USED 0x30
#define VB_STREAK_OFF 0x38
#define VB_RESTORED 0x40
#define VB_MAX_HEADERS 0x48
#define VB_MAX_HEADER_BYTES 0x50
#define VB_MAX_BODY 0x58
#define VB_RESETS 0x60
#define VB_REPROTECTED 0x68
#define VB_REQS 0x100
#define VB_RESP 0x200
#define VB_RESP_RECORD 0x30
#define VB_MAX 32
/* Every this many resets, hot pages left as the snapshot has them are re-protected (kernel.c) */
#define VB_DEMOTE_EVERY 256
#define VB_HOT_AFTER 2

/* slot 2 */
#define GPA_SHARED 0x1800000000

/* slot 3: the restore view, read-only, in instances (the source of in-guest resets) */
#define GPA_SNAPSHOT 0x2000000000
#define KSNAP 0xffffc00000000000

/* slot 4: the program's file, read-only (one-shot runs), at GPA_IMAGE + file offset */
#define GPA_IMAGE 0x3000000000

/* All of RAM, kernel-only, for the guest kernel's page-table and pool work */
#define KPHYS 0xffffa00000000000

/* Software bits of page-table entries that are not present (vmm::pages):
   PTE_LAZY: "allocate on first access" with the entry's W/NX bits as the rights (at the
   table levels: for every page below); PTE_KEEP: a page made inaccessible (PROT_NONE) that
   keeps its frame (the address bits) for when it is made accessible again. */
#define PTE_LAZY 0x200
#define PTE_KEEP 0x400

/* Fixed program-visible addresses */
#define REQUEST_VA 0x7f0000000000
#define SHARED_VA 0x7e0000000000
#define USER_VA_LIMIT 0x7e0000000000
#define TRAMPOLINE_VA 0x7f8000000000

/* Exits from the guest kernel to the VMM: `out %al, $port` */
#define PORT_SYSCALL 0x10
#define PORT_BOOTED 0x11
#define PORT_BATCH_DONE 0x12
#define PORT_EXCEPTION_BASE 0xe0

/* Segment selectors (GDT layout) */
#define SEL_KCODE 0x10
#define SEL_KDATA 0x18
#define SEL_UDATA 0x2b
#define SEL_UCODE 0x33
#define SEL_TSS 0x40

/* PVM hypercalls (this host's kvm_pvm, found by experiment; see docs/platform.md) */
#define PVM_HC_SET_VIF 0x100c
#define PVM_VIF_FLAGS 0x6f

/* Fast-path dispatch: syscalls below this number go through the fast table */
#define FAST_SYSCALLS 512
/*
 * The tenantvm request API: system call numbers far above Linux's (docs/guest-abi.md).  The one
 * source of these numbers for the host (vmm::guest::api), the guest kernel, and Python
 * (tenantvm._native.API_SYSCALLS).  apps/sdk/tenantvm.h repeats them for programs, so that it
 * stands alone; a unit test in crates/vmm/src/guest/mod.rs fails if it drifts from here.
 */
#define API_WAIT_FOR_REQUEST 0x10000
#define API_RESPOND 0x10001
#define API_RESPOND_AND_WAIT 0x10002
#define API_NOP 0x100ff
/* Key-value calls (docs/guest-abi.md): above API_NOP, so the host treats them like any host
 * system call (a batch stops going on in the guest after one; the host may write memory). */
#define API_KV_GET 0x10100
#define API_KV_SET 0x10101
#define API_KV_INCR 0x10102
#define API_KV_DELETE 0x10103
/* The request as the program sees it: a 128-byte header, then 32-byte header entries */
#define REQUEST_HEADER_SIZE 128
#define REQUEST_ENTRY_SIZE 32

#endif
