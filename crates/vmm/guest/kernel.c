/*
 * System calls the guest kernel answers without leaving the VM (the "fast path").
 *
 * An exit to the VMM costs ~25 us on PVM hosts and ~1 us on hardware KVM; the calls here
 * cost well under a microsecond.  Each handler either answers (returns 0, result in
 * frame->rax) or declines (returns 1) and the call is forwarded to the VMM unchanged, which
 * then applies the full Linux semantics (EFAULT, EINVAL, ...).  So a handler only has to be
 * right for the cases it accepts.  The VMM decides which numbers reach this file by filling
 * the fast table (see vmm::guest::kernel).
 *
 * Built freestanding: no libc, no SSE (the program's vector registers are not saved on the
 * way in), no writable globals (all state lives in KDATA and the vCPU area).
 */
#include "layout.h"

typedef unsigned long u64;
typedef long s64;
typedef unsigned int u32;
typedef unsigned char u8;

struct frame { u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax; };

#define KD(off) (*(volatile u64 *)(KBASE + GPA_KDATA + (off)))
#define VCD(off) (*(volatile u64 *)(KVCPU + VC_DATA + (off)))
#define COUNTS ((volatile u64 *)(KVCPU + VC_COUNTS))

enum { ANSWERED = 0, FORWARD = 1 };

/* Linux numbers used here (x86-64). */
#define NR_GETTIMEOFDAY 96
#define NR_ARCH_PRCTL 158
#define NR_TIME 201
#define NR_CLOCK_GETTIME 228
#define NR_GETRANDOM 318
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
#define ARCH_GET_FS 0x1003
#define ARCH_GET_GS 0x1004
#define GRND_ALL_FLAGS 0x7
#define EPERM 1

/* Is [p, p + n) inside one of the writable user ranges the VMM published?  Anything else
 * (unmapped, read-only, kernel, overflow) is left to the VMM, which answers EFAULT. */
static int user_writable(u64 p, u64 n)
{
	u64 count = KD(KD_NWRANGES);
	if (p + n < p)
		return 0;
	for (u64 i = 0; i < count && i < KD_MAX_WRANGES; i++) {
		u64 lo = KD(KD_WRANGES + 16 * i), hi = KD(KD_WRANGES + 16 * i + 8);
		if (p >= lo && p + n <= hi)
			return 1;
	}
	return 0;
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

/* Nanoseconds of the chosen base clock, extrapolated from the VMM's anchor with the TSC. */
static u64 clock_ns(u64 base)
{
	u64 tsc = rdtsc(), anchor = VCD(VCD_TSC_BASE);
	u64 delta = tsc > anchor ? tsc - anchor : 0;
	unsigned __int128 scaled = (unsigned __int128)delta * VCD(VCD_TSC_MULT);
	return base + (u64)(scaled >> VCD(VCD_TSC_SHIFT));
}

/* CLOCK_REALTIME, *_COARSE and CLOCK_BOOTTIME share the two anchors; others go to the VMM. */
static int clock_base(u64 clk, u64 *base)
{
	switch (clk) {
	case 0: /* CLOCK_REALTIME */
	case 5: /* CLOCK_REALTIME_COARSE */
		*base = VCD(VCD_REAL_BASE);
		return 1;
	case 1: /* CLOCK_MONOTONIC */
	case 4: /* CLOCK_MONOTONIC_RAW */
	case 6: /* CLOCK_MONOTONIC_COARSE */
	case 7: /* CLOCK_BOOTTIME */
		*base = VCD(VCD_MONO_BASE);
		return 1;
	default:
		return 0;
	}
}

static void put64(u64 addr, u64 v) { *(volatile u64 *)addr = v; }

static int sys_clock_gettime(struct frame *f)
{
	u64 base;
	if (!VCD(VCD_CLOCK_OK) || !clock_base(f->rdi, &base) || !user_writable(f->rsi, 16))
		return FORWARD;
	u64 ns = clock_ns(base);
	put64(f->rsi, ns / 1000000000);
	put64(f->rsi + 8, ns % 1000000000);
	f->rax = 0;
	return ANSWERED;
}

static int sys_gettimeofday(struct frame *f)
{
	if (!VCD(VCD_CLOCK_OK))
		return FORWARD;
	if ((f->rdi && !user_writable(f->rdi, 16)) || (f->rsi && !user_writable(f->rsi, 8)))
		return FORWARD;
	u64 ns = clock_ns(VCD(VCD_REAL_BASE));
	if (f->rdi) {
		put64(f->rdi, ns / 1000000000);
		put64(f->rdi + 8, (ns % 1000000000) / 1000);
	}
	if (f->rsi)
		put64(f->rsi, 0); /* struct timezone: UTC, no DST */
	f->rax = 0;
	return ANSWERED;
}

static int sys_time(struct frame *f)
{
	if (!VCD(VCD_CLOCK_OK) || (f->rdi && !user_writable(f->rdi, 8)))
		return FORWARD;
	u64 secs = clock_ns(VCD(VCD_REAL_BASE)) / 1000000000;
	if (f->rdi)
		put64(f->rdi, secs);
	f->rax = secs;
	return ANSWERED;
}

/* getrandom from the per-request pool the VMM refills; a call the pool cannot cover in full
 * goes to the VMM, which reads the host's RNG. */
static int sys_getrandom(struct frame *f)
{
	u64 buf = f->rdi, len = f->rsi, pos = VCD(VCD_ENTROPY_POS);
	if ((f->rdx & ~(u64)GRND_ALL_FLAGS) || pos > VCD_ENTROPY_SIZE || len > VCD_ENTROPY_SIZE - pos ||
	    !user_writable(buf, len))
		return FORWARD;
	volatile u8 *pool = (volatile u8 *)(KVCPU + VC_DATA + VCD_ENTROPY + pos);
	for (u64 i = 0; i < len; i++) {
		((volatile u8 *)buf)[i] = pool[i];
		pool[i] = 0; /* never hand out the same bytes twice */
	}
	VCD(VCD_ENTROPY_POS) = pos + len;
	f->rax = len;
	return ANSWERED;
}

static void write_base(u64 msr, u64 value)
{
	if (KD(KD_FSGSBASE)) {
		if (msr == 0xc0000100)
			__asm__ volatile("wrfsbase %0" ::"r"(value));
		else
			__asm__ volatile("wrgsbase %0" ::"r"(value));
	} else {
		__asm__ volatile("wrmsr" ::"c"((u32)msr), "a"((u32)value), "d"((u32)(value >> 32)));
	}
}

static u64 read_base(u64 msr)
{
	u64 value;
	if (KD(KD_FSGSBASE)) {
		if (msr == 0xc0000100)
			__asm__ volatile("rdfsbase %0" : "=r"(value));
		else
			__asm__ volatile("rdgsbase %0" : "=r"(value));
		return value;
	}
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"((u32)msr));
	return ((u64)hi << 32) | lo;
}

static int sys_arch_prctl(struct frame *f)
{
	u64 code = f->rdi, addr = f->rsi;
	switch (code) {
	case ARCH_SET_FS:
	case ARCH_SET_GS:
		/* Linux refuses bases outside the user half with EPERM. */
		f->rax = addr >= USER_VA_LIMIT ? (u64)-EPERM : 0;
		if (addr < USER_VA_LIMIT)
			write_base(code == ARCH_SET_FS ? 0xc0000100 : 0xc0000101, addr);
		return ANSWERED;
	case ARCH_GET_FS:
	case ARCH_GET_GS:
		if (!user_writable(addr, 8))
			return FORWARD;
		put64(addr, read_base(code == ARCH_GET_FS ? 0xc0000100 : 0xc0000101));
		f->rax = 0;
		return ANSWERED;
	default:
		return FORWARD;
	}
}

int fast_syscall(struct frame *f)
{
	u64 nr = f->rax;
	int r;
	switch (nr) {
	case NR_CLOCK_GETTIME:
		r = sys_clock_gettime(f);
		break;
	case NR_GETTIMEOFDAY:
		r = sys_gettimeofday(f);
		break;
	case NR_TIME:
		r = sys_time(f);
		break;
	case NR_GETRANDOM:
		r = sys_getrandom(f);
		break;
	case NR_ARCH_PRCTL:
		r = sys_arch_prctl(f);
		break;
	default:
		r = FORWARD;
	}
	if (r == ANSWERED)
		COUNTS[nr]++;
	return r;
}
