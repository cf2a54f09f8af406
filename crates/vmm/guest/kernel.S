/*
 * The tenantvm guest kernel: the only code that runs in the guest's supervisor mode.
 *
 * It is tiny on purpose.  It owns four paths:
 *   kernel_start   first instructions of a vCPU: PVM registration, then one exit (PORT_BOOTED)
 *                  so the VMM can load the registers for what comes next.
 *   syscall_entry  LSTAR: answers a few system calls itself (fast table, see kernel.c) and
 *                  forwards every other one to the VMM with a single `out` (PORT_SYSCALL).
 *                  The VMM reads and writes the caller's registers through kvm_run's sync area.
 *   reset_entry    after the VMM restored memory to the snapshot: reload the snapshot's
 *                  FPU/SSE/AVX state and FS/GS bases, then return to the program.
 *   exception_N    any exception: one exit (PORT_EXCEPTION_BASE + vector); never resumed.
 *
 * Returning to user mode differs by platform: `sysretq` on hardware KVM, `int $0x19` (the
 * PVM "return to user" hypercall, rip = rcx, rflags = r11) on PVM.  Both take the same
 * registers, so one flag in KDATA selects the instruction.
 *
 * The syscall path never touches the user stack: on hardware KVM `syscall` keeps the user's
 * rsp, so nothing may be pushed before switching to the kernel stack.
 */
#include "layout.h"

#define KDATA_VA (KBASE + GPA_KDATA)
#define VCD_VA (KVCPU + VC_DATA)
#define VB_VA (KVCPU + VC_BATCH)
#define SNAP(reg) (KDATA_VA + KD_SNAP_REGS + 8 * (reg))

	.code64
	.text

/* ---- kernel_start: rsp = kernel stack.  PVM: register the per-vCPU VIF page. */
	.globl kernel_start
kernel_start:
	xor	%eax, %eax
	cmpq	$0, KDATA_VA + KD_PVM
	je	1f
	mov	$PVM_HC_SET_VIF, %eax
	movabs	$(GPA_VCPU + VC_VIF + PVM_VIF_FLAGS), %rbx
	int	$0x1b
1:	out	%al, $PORT_BOOTED	/* rax = registration result (0 = ok) */
	/* The VMM loads the registers and sets rip to enter_user or reset_entry. */
	ud2

/* ---- enter_user / to_user: rcx = user rip, r11 = user rflags, rsp = user rsp */
	.globl enter_user
enter_user:
	.globl to_user
to_user:
	/* Page-table entries the VMM changed must be written again by this kernel first (the
	 * shadow MMU only sees the guest's own writes): see sync_ptes.  Flags are free here
	 * (the program's come from r11). */
	mov	%rax, VCD_VA + VCD_PTLOG_SAVE
	mov	VCD_VA + VCD_PTLOG_COUNT, %rax
	cmp	VCD_VA + VCD_PTLOG_DONE, %rax
	mov	VCD_VA + VCD_PTLOG_SAVE, %rax
	jne	sync_then_user
to_user_now:
	cmpq	$0, KDATA_VA + KD_PVM
	jne	1f
	sysretq
1:	int	$0x19

/* The registers a C call may change, saved in this order: fast_c's frame (struct frame in
 * kernel.c) is laid out from it. */
.macro PUSH_CALLER_SAVED
	push	%rax
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%r8
	push	%r9
	push	%r10
	push	%r11
.endm
.macro POP_CALLER_SAVED
	pop	%r11
	pop	%r10
	pop	%r9
	pop	%r8
	pop	%rdi
	pop	%rsi
	pop	%rdx
	pop	%rcx
	pop	%rax
.endm

/* Calls sync_ptes(\arg) on the kernel stack, every register but the flags preserved. */
.macro SYNC_PTES arg
	mov	%rsp, VCD_VA + VCD_PTLOG_RSP
	mov	$(KVCPU + VC_KSTACK_TOP), %rsp
	PUSH_CALLER_SAVED
	sub	$8, %rsp
	mov	$\arg, %edi
	call	sync_ptes
	add	$8, %rsp
	POP_CALLER_SAVED
	mov	VCD_VA + VCD_PTLOG_RSP, %rsp
.endm

sync_then_user:
	SYNC_PTES 0
	jmp	to_user_now

/* ---- syscall_entry (LSTAR).  rcx = user rip, r11 = user rflags, rsp = user rsp. */
	.balign 64
	.globl syscall_entry
syscall_entry:
	cmp	$FAST_SYSCALLS, %rax
	jae	1f
	jmp	*(KBASE + GPA_FAST_TABLE)(,%rax,8)
	/* respond / respond_and_wait during a batch: answered here (see batch_respond) */
1:	cmp	$API_RESPOND, %rax
	je	2f
	cmp	$API_RESPOND_AND_WAIT, %rax
	jne	forward
2:	cmpq	$0, VB_VA + VB_ACTIVE
	je	forward
	jmp	fast_c

	.globl forward
forward:
	out	%al, $PORT_SYSCALL	/* the VMM handles it and sets rax */
	jmp	to_user

/* fast_const: the answer is a constant the VMM stored in the fast-value table */
	.globl fast_const
fast_const:
	incq	(KVCPU + VC_COUNTS)(,%rax,8)
	mov	(KBASE + GPA_FAST_VALUE)(,%rax,8), %rax
	jmp	to_user

/* fast_c: switch to the kernel stack, save the caller-saved registers the C code may use,
 * call fast_syscall(frame).  It returns 0 with the result in frame->rax (and counts the call),
 * 1 to forward the call unchanged, 2 to serve the next request of a batch (memory already
 * reset), or 3 when the batch is over (memory already reset). */
	.globl fast_c
fast_c:
	mov	%rsp, VCD_VA + VCD_USER_RSP
	mov	$(KVCPU + VC_KSTACK_TOP), %rsp
	PUSH_CALLER_SAVED
	mov	%rsp, %rdi
	call	fast_syscall
	mov	%eax, VCD_VA + VCD_CODE
	POP_CALLER_SAVED
	mov	VCD_VA + VCD_USER_RSP, %rsp
	cmpl	$0, VCD_VA + VCD_CODE
	je	to_user
	cmpl	$1, VCD_VA + VCD_CODE
	je	forward
	cmpl	$2, VCD_VA + VCD_CODE
	je	batch_next
	out	%al, $PORT_BATCH_DONE	/* the batch is over and memory is back at the snapshot */
	ud2

/* batch_next: the snapshot's registers with rax = the next request, then what reset_entry
 * does for the rest of the CPU state. */
batch_next:
	mov	SNAP(1), %rbx
	mov	SNAP(2), %rcx
	mov	SNAP(3), %rdx
	mov	SNAP(4), %rsi
	mov	SNAP(5), %rdi
	mov	SNAP(6), %rsp
	mov	SNAP(7), %rbp
	mov	SNAP(8), %r8
	mov	SNAP(9), %r9
	mov	SNAP(10), %r10
	mov	SNAP(11), %r11
	mov	SNAP(12), %r12
	mov	SNAP(13), %r13
	mov	SNAP(14), %r14
	mov	SNAP(15), %r15
	mov	VCD_VA + VCD_NEXT_RAX, %rax
	jmp	reset_entry

/* ---- reset_entry: the VMM restored memory and loaded the snapshot's registers (with rax =
 * the value wait_for_request returns).  Reload what the registers do not cover. */
	.balign 64
	.globl reset_entry
reset_entry:
	/* Undo the page-table changes of the last request and put the page pool back */
	SYNC_PTES 1
	mov	%rax, VCD_VA + VCD_SAVE_RAX
	mov	%rdx, VCD_VA + VCD_SAVE_RDX
	mov	$-1, %eax
	mov	$-1, %edx
	xrstor	KBASE + GPA_XSAVE
	xor	%eax, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %fs
	mov	%eax, %gs
	cmpq	$0, KDATA_VA + KD_FSGSBASE
	je	1f
	mov	KDATA_VA + KD_SNAP_FS, %rax
	wrfsbase %rax
	mov	KDATA_VA + KD_SNAP_GS, %rax
	wrgsbase %rax
	jmp	2f
1:
	/* no FSGSBASE: wrmsr needs ecx, so park rcx (the user rip) in the kernel scratch too */
	mov	%rcx, VCD_VA + VCD_USER_RSP
	mov	$0xc0000100, %ecx
	mov	KDATA_VA + KD_SNAP_FS, %eax
	mov	KDATA_VA + KD_SNAP_FS + 4, %edx
	wrmsr
	mov	$0xc0000101, %ecx
	mov	KDATA_VA + KD_SNAP_GS, %eax
	mov	KDATA_VA + KD_SNAP_GS + 4, %edx
	wrmsr
	mov	VCD_VA + VCD_USER_RSP, %rcx
2:	mov	VCD_VA + VCD_SAVE_RDX, %rdx
	mov	VCD_VA + VCD_SAVE_RAX, %rax
	jmp	to_user

/* ---- exceptions: uniform frame [error code] rip cs rflags rsp ss, then one exit */
	.balign 64
	.globl exception_base
exception_base:
	.set vec, 0
	.rept 32
	.balign 32
	.if vec == 14
	jmp	pf_entry		/* page faults: maybe memory to hand out (lazy_fault) */
	.elseif (vec == 8) || (vec >= 10 && vec <= 13) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	nop				/* the CPU pushed an error code */
	nop
	.else
	pushq	$0
	.endif
	out	%al, $(PORT_EXCEPTION_BASE + vec)
1:	hlt
	jmp	1b
	.set vec, vec + 1
	.endr
	.globl exception_end
exception_end:

/* ---- pf_entry: a page fault, frame error code, rip, cs, rflags, rsp, ss.  A fault of the
 * program on memory it may use but that has no page yet gets one (lazy_fault) and resumes
 * without an exit; every other fault exits as any exception does. */
pf_entry:
	testb	$3, 16(%rsp)
	jz	2f
	PUSH_CALLER_SAVED
	sub	$8, %rsp
	mov	%cr2, %rdi
	mov	80(%rsp), %rsi
	call	lazy_fault
	add	$8, %rsp
	test	%eax, %eax
	POP_CALLER_SAVED
	jnz	2f
	add	$8, %rsp		/* the error code */
	cmpq	$0, KDATA_VA + KD_PVM
	jne	1f
	iretq
1:	int	$0x17			/* PVM: return to user with the iret frame at rsp */
2:	out	%al, $(PORT_EXCEPTION_BASE + 14)
3:	hlt
	jmp	3b
