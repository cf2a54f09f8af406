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

enum { ANSWERED = 0, FORWARD = 1, NEXT_REQUEST = 2, BATCH_DONE = 3 };

#define VB(off) (*(volatile u64 *)(KVCPU + VC_BATCH + (off)))

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

#define PTE_P 0x1UL
#define PTE_W 0x2UL
#define PTE_U 0x4UL
#define PTE_A 0x20UL
#define PTE_D 0x40UL
#define PTE_PS 0x80UL
#define PTE_NX (1UL << 63)
#define PTE_ADDR 0x000ffffffffff000UL
/* All of RAM, by guest-physical address */
#define PHYS(gpa) ((volatile u64 *)(KPHYS + (gpa)))

/* Does every page of [p, p + n) have a page in the program's page tables that it may read
 * (and write, with `write`)?  Memory on demand that has no page yet does not: the VMM gives
 * it one. */
static int user_pages(u64 p, u64 n, int write)
{
	if (p + n < p || p + n > USER_VA_LIMIT)
		return 0;
	for (u64 page = p & ~0xfffUL; page < p + n; page += 4096) {
		u64 e = *PHYS(GPA_KPML4 + ((page >> 39) & 511) * 8);
		for (int shift = 30;; shift -= 9) {
			if (!(e & PTE_P))
				return 0;
			e = *PHYS((e & PTE_ADDR) + ((page >> shift) & 511) * 8);
			if (shift == 12 || (shift == 21 && (e & PTE_PS)))
				break;
		}
		if (!(e & PTE_P) || !(e & PTE_U) || (write && !(e & PTE_W)))
			return 0;
	}
	return 1;
}

/* Is [p, p + n) inside one of the `max` ranges of the table at KDATA offset `table`, whose
 * count is at `count_field`? */
static int in_ranges(u64 p, u64 n, u64 count_field, u64 table, u64 max)
{
	u64 count = KD(count_field);
	if (p + n < p)
		return 0;
	for (u64 i = 0; i < count && i < max; i++) {
		u64 lo = KD(table + 16 * i), hi = KD(table + 16 * i + 8);
		if (p >= lo && p + n <= hi)
			return 1;
	}
	return 0;
}

/* Is [p, p + n) inside one of the writable user ranges the VMM published, or in pages the page
 * tables say the program may write?  Anything else (unmapped, read-only, kernel, overflow, no
 * page yet) is left to the VMM, which answers EFAULT or gives the memory its pages. */
static int user_writable(u64 p, u64 n)
{
	return in_ranges(p, n, KD_NWRANGES, KD_WRANGES, KD_MAX_WRANGES) || user_pages(p, n, 1);
}

/* Is [p, p + n) inside one of the readable user ranges?  (An empty range always is.) */
static int user_readable(u64 p, u64 n)
{
	return n == 0 || in_ranges(p, n, KD_NRRANGES, KD_RRANGES, KD_MAX_RRANGES) || user_pages(p, n, 0);
}

static void copy_bytes(u64 dst, u64 src, u64 n)
{
	__asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n)::"memory");
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

/* ---- batches: several requests in one KVM_RUN, memory reset here between them ----
 *
 * The host queues up to VB_MAX requests and sets VB_ACTIVE.  When the program responds, this
 * code copies the response into the response area (validating every pointer, as the host
 * would), restores the pages the request wrote from the read-only snapshot slot, and starts
 * the next request from the snapshot's registers; after the last one it exits once.
 * Anything unusual -- a bad pointer, a response over a limit or over the room left, a request
 * during which the host answered a system call (it may have written memory the page tables do
 * not know about) -- is forwarded to the host, which handles it the ordinary way.
 *
 * Which pages changed: the Dirty bits of the program's 4 KiB PTEs (set by the CPU, or by PVM's
 * shadow MMU, on the first write; cleared here).  Accessed bits of the page directory entries
 * say which page tables to look at at all.  A page dirtied in VB_HOT_AFTER resets in a row is
 * "hot": its Dirty bit is left set (clearing it costs a trapped PTE write, an invlpg and a
 * write fault: ~10 us under PVM) and it is simply copied back every time; every
 * VB_DEMOTE_EVERY resets the hot pages that the last request left as the snapshot has them
 * (gone quiet, or written back to the same bytes) are cleared again; one written again by the
 * next request is hot again at once.  Clearing every hot page every 64 resets, each to be
 * dirty twice in a row again, cost the pages still written two resets' worth of trapped PTE
 * writes, invlpgs, TLB flushes and write faults per page (the CPython hello's ~118: 3.7
 * invlpg and 11 TLB flushes per batched request on average in KVM's statistics; a batched
 * request's CPU time went from 1.45x a lone call's to 0.31x: bench/results/lang_breakdown.md).
 */


static void invlpg(u64 va) { __asm__ volatile("invlpg (%0)" ::"r"(va) : "memory"); }

static void zero_page(u64 dst)
{
	u64 n = 4096;
	__asm__ volatile("rep stosb" : "+D"(dst), "+c"(n) : "a"(0) : "memory");
}

/* Puts back the snapshot's contents of RAM page `page` at `va`, from the restore view: its
 * index says which view page holds them, or 0 for a page that was zero. */
static void restore_page(u64 va, u64 page)
{
	u32 src = ((const volatile u32 *)KSNAP)[page];
	if (src)
		copy_bytes(va, KSNAP + ((u64)src << 12), 4096);
	else
		zero_page(va);
}

/* Whether RAM page `page` at `va` holds what the snapshot has there. */
static int same_as_snapshot(u64 va, u64 page)
{
	u32 src = ((const volatile u32 *)KSNAP)[page];
	const volatile u64 *a = (const volatile u64 *)va;
	const volatile u64 *b = (const volatile u64 *)(KSNAP + ((u64)src << 12));
	for (u64 k = 0; k < 512; k++)
		if (a[k] != (src ? b[k] : 0))
			return 0;
	return 1;
}

/* The indexes [first, last) of the entries of a table whose entries each map 1 << shift bytes
 * from `base` that overlap [lo, hi). */
static u64 first_index(u64 base, int shift, u64 lo) { return lo > base ? (lo - base) >> shift : 0; }
static u64 last_index(u64 base, int shift, u64 hi)
{
	u64 span = 512UL << shift;
	return hi - base >= span ? 512 : (hi - base + (1UL << shift) - 1) >> shift;
}

/* The first index in [i, last) of a table whose entry has any of `bits`, or `last`.  Most of
 * a sparse table is zero: eight entries are looked at per test. */
static u64 next_entry(volatile u64 *table, u64 i, u64 last, u64 bits)
{
	for (; i < last && (i & 7); i++)
		if (table[i] & bits)
			return i;
	for (; i + 8 <= last; i += 8)
		if ((table[i] | table[i + 1] | table[i + 2] | table[i + 3] | table[i + 4] | table[i + 5] | table[i + 6] |
		     table[i + 7]) &
		    bits)
			break;
	for (; i < last; i++)
		if (table[i] & bits)
			return i;
	return last;
}

/* The state one reset carries through the page tables. */
struct reset_pass {
	volatile u8 *streak;
	u64 ram;
	u64 restored;
	u64 reprotected;
	int demote;
	int flush;
};

/* Restores the written pages of RAM among the entries [first, last) of the page table `pt`,
 * which maps the 2 MiB at `base`; returns whether a hot page stays dirty in it. */
static int reset_table(struct reset_pass *p, volatile u64 *pt, u64 base, u64 first, u64 last)
{
	int hot_here = 0;
	for (u64 i = first; i < last; i++) {
		u64 e = pt[i];
		u64 gpa = e & PTE_ADDR;
		if (!(e & PTE_P) || gpa >= p->ram)
			continue;
		u64 page = gpa >> 12;
		if (!(e & PTE_D)) {
			p->streak[page] = 0;
			continue;
		}
		u64 va = base + (i << 12);
		u8 s = p->streak[page];
		if (p->demote && s >= VB_HOT_AFTER && same_as_snapshot(va, page)) {
			/* A hot page the last request left as the snapshot has it: it may have gone
			 * quiet, so it is re-protected (nothing to copy).  If the next request writes
			 * it after all (CPython's reference counts, up and down again), it is hot again
			 * at once. */
			pt[i] &= ~PTE_D;
			invlpg(va);
			p->streak[page] = VB_HOT_AFTER - 1;
			p->reprotected++;
			continue;
		}
		restore_page(va, page);
		p->restored++;
		if (s < 255)
			p->streak[page] = ++s;
		if (s >= VB_HOT_AFTER) {
			/* Stays dirty (and so is copied back every time), through a demotion too: the
			 * request changed it, so it is still written. */
			hot_here = 1;
			continue;
		}
		pt[i] &= ~PTE_D; /* our own store set it again; clear after copying */
		invlpg(va);
		p->reprotected++;
	}
	return hot_here;
}

/* Restores every page the last request wrote; returns how many.  Walks the program's page
 * tables over the KD_RESET ranges, level by level, skipping whatever has no table (the
 * address space is sparse: reservations of gigabytes have none) and every page table whose
 * directory entry was not accessed since the last demotion, and restores each written page of
 * RAM by the frame its entry names.  (Walking from the top for every 2 MiB instead cost ~2 us
 * per reset here: the lower half is ~1,300 of them under the program's few directories.) */
static u64 reset_memory(void)
{
	u64 resets = VB(VB_RESETS) + 1;
	VB(VB_RESETS) = resets;
	struct reset_pass p = {
		.streak = (volatile u8 *)(KVCPU + VB(VB_STREAK_OFF)),
		.ram = KD(KD_RAM_SIZE),
		.restored = 0,
		.reprotected = 0,
		.demote = resets % VB_DEMOTE_EVERY == 0,
		.flush = 0,
	};
	volatile u64 *pml4 = PHYS(GPA_KPML4);
	for (u64 r = 0; r < KD(KD_NRESET) && r < KD_MAX_RESET; r++) {
		u64 lo = KD(KD_RESET + 16 * r), hi = KD(KD_RESET + 16 * r + 8);
		if (hi > USER_VA_LIMIT)
			hi = USER_VA_LIMIT;
		if (lo >= hi)
			continue;
		for (u64 i4 = lo >> 39, l4 = ((hi - 1) >> 39) + 1; (i4 = next_entry(pml4, i4, l4, PTE_P)) < l4; i4++) {
			u64 e4 = pml4[i4];
			u64 base4 = i4 << 39;
			volatile u64 *pdpt = PHYS(e4 & PTE_ADDR);
			for (u64 i3 = first_index(base4, 30, lo), l3 = last_index(base4, 30, hi);
			     (i3 = next_entry(pdpt, i3, l3, PTE_P)) < l3; i3++) {
				u64 e3 = pdpt[i3];
				if (!(e3 & PTE_P) || (e3 & PTE_PS))
					continue;
				u64 base3 = base4 + (i3 << 30);
				volatile u64 *pd = PHYS(e3 & PTE_ADDR);
				for (u64 i2 = first_index(base3, 21, lo), l2 = last_index(base3, 21, hi);
				     (i2 = next_entry(pd, i2, l2, PTE_A)) < l2; i2++) {
					u64 e2 = pd[i2];
					if ((e2 & (PTE_P | PTE_PS | PTE_A)) != (PTE_P | PTE_A))
						continue;
					u64 base2 = base3 + (i2 << 21);
					volatile u64 *pt = PHYS(e2 & PTE_ADDR);
					int hot_here = reset_table(&p, pt, base2, first_index(base2, 12, lo), last_index(base2, 12, hi));
					/* Clearing the directory entry's Accessed bit (to skip this table next
					 * time) is another trapped page-table write plus a page walk under PVM:
					 * worth it only for tables that went quiet, so it is done at demotions
					 * only. */
					if (!hot_here && p.demote) {
						pd[i2] &= ~PTE_A;
						p.flush = 1;
					}
				}
			}
		}
	}
	/* Hardware caches page-directory entries: clearing their Accessed bits only takes effect
	 * (and so they are set again by the next walk) after a full TLB flush.  PVM's shadow MMU
	 * sees the guest's PDE writes itself. */
	if (p.flush && !KD(KD_PVM)) {
		u64 cr3;
		__asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");
	}
	VB(VB_RESTORED) += p.restored;
	VB(VB_REPROTECTED) += p.reprotected;
	return p.restored;
}

/* ---- memory on demand (vmm::pages has the VMM's half and the whole story) ----
 *
 * The program's mappings have no pages until it touches them: their page-table entries are
 * "lazy" markers (not present, PTE_LAZY, the rights in W/NX), at a table level for a whole
 * block.  A fault on one takes a page (and any table on the way) from the pool in KDATA and
 * installs it, without an exit.  Every entry changed is logged with its old value, so that
 * reset_entry can undo it: the VMM's reset restores RAM, but not the page tables a snapshot
 * holds, whose Dirty bits the in-guest resets rely on. */
#define TABLE_BITS (PTE_P | PTE_W | PTE_U | PTE_A)
/* Pages installed per fault where the following entries of the table are the same lazy
 * memory: a fault costs far more than a page-table write (an exception round trip, CR2 read
 * through the hypervisor under PVM), and a program that touches a page usually touches the
 * next. */
#define FAULT_AROUND 16

static u64 pool_alloc(void)
{
	if (KD(KD_POOL_USED) >= KD(KD_POOL_LIMIT))
		return 0;
	u64 page = KD(KD_POOL_FREE);
	if (page) {
		KD(KD_POOL_FREE) = *PHYS(page);
		zero_page(KPHYS + page);
	} else {
		/* Never handed out since boot: still zero (and not touching it here spares the
		 * host a page until the program writes it) */
		page = KD(KD_POOL_NEXT);
		if (page >= KD(KD_POOL_END))
			return 0;
		KD(KD_POOL_NEXT) = page + 4096;
	}
	KD(KD_POOL_USED) += 1;
	return page;
}

static volatile u64 *ptlog_entry(u64 i)
{
	return (volatile u64 *)(KVCPU + VCD(VCD_PTLOG_OFF) + i * PTLOG_ENTRY);
}

/* Sets the entry at `slot` (GPA) to `value`, logged (room was checked). */
static void set_entry(u64 slot, u64 va, u64 value)
{
	u64 n = VCD(VCD_PTLOG_COUNT);
	volatile u64 *e = ptlog_entry(n);
	e[0] = slot;
	e[1] = va;
	e[2] = *PHYS(slot);
	VCD(VCD_PTLOG_COUNT) = n + 1;
	VCD(VCD_PTLOG_DONE) = n + 1; /* our own write: the shadow MMU saw it */
	*PHYS(slot) = value;
}

/* A page fault at `va` with error code `err`: 0 when a page was installed, 1 to leave the
 * fault to the VMM (not lazy memory, a protection fault, or no room: it decides). */
int lazy_fault(u64 va, u64 err)
{
	if (va >= USER_VA_LIMIT || (err & 1) || !(err & 4))
		return 1;
	if (VCD(VCD_PTLOG_COUNT) + 4 > VCD(VCD_PTLOG_CAP))
		return 1;
	u64 e = *PHYS(GPA_KPML4 + ((va >> 39) & 511) * 8);
	if (!(e & PTE_P))
		return 1;
	u64 table = e & PTE_ADDR;
	for (int shift = 30; shift >= 12; shift -= 9) {
		u64 slot = table + ((va >> shift) & 511) * 8;
		e = *PHYS(slot);
		if (e & PTE_P) {
			if (shift == 12 || (e & PTE_PS))
				return 1;
			table = e & PTE_ADDR;
			continue;
		}
		if (!(e & PTE_LAZY))
			return 1;
		u64 page = pool_alloc();
		if (!page)
			return 1;
		/* A batch cannot go on in the guest: its reset does not undo this. */
		VB(VB_HOST_TOUCHED) = 1;
		if (shift > 12) {
			volatile u64 *t = PHYS(page);
			for (u64 i = 0; i < 512; i++)
				t[i] = e;
			set_entry(slot, va | PTLOG_LINKS_TABLE, page | TABLE_BITS);
			table = page;
		} else {
			set_entry(slot, va, page | PTE_P | PTE_U | PTE_A | (e & (PTE_W | PTE_NX)));
			for (u64 k = 1; k < FAULT_AROUND; k++) {
				u64 next = slot + 8 * k;
				if ((next & 0xfff) == 0 || *PHYS(next) != e || VCD(VCD_PTLOG_COUNT) + 1 > VCD(VCD_PTLOG_CAP))
					break;
				u64 more = pool_alloc();
				if (!more)
					break;
				set_entry(next, va + (k << 12), more | PTE_P | PTE_U | PTE_A | (e & (PTE_W | PTE_NX)));
			}
			return 0;
		}
	}
	return 1;
}

/* Changes to one page table past this many are made known with one CR3 reload at the end
 * (the hypervisor then re-reads every page table it let the guest write without trapping,
 * and flushes the TLB) rather than one invlpg each (a trap each).  The stores themselves
 * are always made: for a table the shadow MMU write-protects, the trapped store is what
 * updates it. */
#define SYNC_TABLE_AFTER 32

/* Makes a shadow MMU forget the page table in RAM page `frame`, if it has one for it.  The
 * tables a request links come from the pool; the VMM's reset then puts their pages back as they
 * were at the snapshot with host writes, which a shadow MMU (PVM) does not see: a later request
 * that took the same page as a table again would be translated through the stale shadow copy
 * (addresses of the earlier request's pages: its data, read and written by the next one).  A
 * guest write to a shadowed table narrower than an entry makes KVM's shadow MMU drop that
 * table's shadow page (its "misaligned write" rule); the two bytes written are the ones there,
 * so the page keeps the contents the VMM gave it. */
static void forget_table(u64 frame)
{
	volatile unsigned short *p = (volatile unsigned short *)(KPHYS + frame);
	unsigned short v = *p;
	__asm__ volatile("movw %1, %0" : "=m"(*p) : "r"(v) : "memory");
}

/* reset == 0: make the entries the VMM changed known (an entry that was present may still be
 * in the shadow MMU or the TLB); reset == 1: undo every logged change, newest first (the
 * tables the request linked forgotten by the shadow MMU), and put the pool back as it was at
 * the snapshot. */
void sync_ptes(u64 reset)
{
	u64 n = VCD(VCD_PTLOG_COUNT), lo = reset ? 0 : VCD(VCD_PTLOG_DONE);
	int reload = 0;
	u64 i = n;
	while (i > lo) {
		/* the run [j, i) of entries in one page-table page */
		u64 page = ptlog_entry(i - 1)[0] & ~0xfffUL, j = i - 1;
		while (j > lo && (ptlog_entry(j - 1)[0] & ~0xfffUL) == page)
			j--;
		int many = i - j > SYNC_TABLE_AFTER;
		for (u64 k = i; k-- > j;) {
			volatile u64 *e = ptlog_entry(k);
			volatile u64 *slot = PHYS(e[0]);
			if (e[1] & PTLOG_FORGET_ONLY) {
				if (reset)
					forget_table(e[2] & PTE_ADDR);
				continue;
			}
			if (!reset && !(e[2] & PTE_P))
				continue; /* was not present: nothing of it can be cached */
			if (reset) {
				u64 now = *slot;
				if ((e[1] & PTLOG_LINKS_TABLE) && (now & PTE_P) && now != e[2])
					forget_table(now & PTE_ADDR);
				*slot = e[2];
			}
			else
				*slot = *slot;
			if (!many)
				invlpg(e[1]);
		}
		reload |= many;
		i = j;
	}
	if (reload) {
		u64 cr3;
		__asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");
	}
	if (reset) {
		VCD(VCD_PTLOG_COUNT) = 0;
		VCD(VCD_PTLOG_DONE) = 0;
		for (u64 k = 0; k < 5; k++)
			KD(KD_POOL_NEXT + 8 * k) = KD(KD_SNAP_POOL + 8 * k);
		return;
	}
	VCD(VCD_PTLOG_DONE) = n;
}

/* The program maps only the request area, and it holds the running request alone: the host
 * stages a batch's requests (each encoded as if at REQUEST_VA) in a kernel-only part of the
 * vCPU area; VB_REQS[i] is (offset of request i there) | (its length) << 32.  This copies the
 * next one over the current one and zeroes what is left of the current one. */
static void next_request_in_place(u64 current, u64 next)
{
	u64 cur_len = current >> 32, off = next & 0xffffffffUL, len = next >> 32;
	copy_bytes(KVCPU + VC_REQUEST, KVCPU + off, len);
	if (cur_len > len) {
		u64 dst = KVCPU + VC_REQUEST + len, n = cur_len - len;
		__asm__ volatile("rep stosb" : "+D"(dst), "+c"(n) : "a"(0) : "memory");
	}
}

/* respond / respond_and_wait inside a batch. */
static int batch_respond(struct frame *f)
{
	u64 status = f->rdi, hdrs = f->rsi, count = f->rdx, body = f->r10, body_len = f->r8;
	u64 i = VB(VB_NEXT);
	if (VB(VB_HOST_TOUCHED) || i >= VB(VB_COUNT) || i >= VB_MAX)
		return FORWARD;
	if (count > VB(VB_MAX_HEADERS) || body_len > VB(VB_MAX_BODY) || !user_readable(hdrs, count * 32) ||
	    !user_readable(body, body_len))
		return FORWARD;
	u64 area = KVCPU + VB(VB_RESP_OFF), size = VB(VB_RESP_SIZE), used = VB(VB_RESP_USED);
	u64 header_bytes = 0, need = count * 32 + body_len;
	for (u64 h = 0; h < count; h++) {
		volatile u64 *e = (volatile u64 *)(hdrs + 32 * h);
		u64 name = e[0], nlen = e[1], value = e[2], vlen = e[3];
		if (nlen > 0xffff || vlen > 0xffffffff || !user_readable(name, nlen) || !user_readable(value, vlen))
			return FORWARD;
		header_bytes += nlen + vlen;
	}
	need += header_bytes;
	if (header_bytes > VB(VB_MAX_HEADER_BYTES) || need > size || used > size - need)
		return FORWARD;
	/* Header table (offsets into the area), then names and values, then the body. */
	u64 table_off = used, at = used + count * 32;
	for (u64 h = 0; h < count; h++) {
		volatile u64 *e = (volatile u64 *)(hdrs + 32 * h);
		volatile u64 *out = (volatile u64 *)(area + table_off + 32 * h);
		u64 name = e[0], nlen = e[1], value = e[2], vlen = e[3];
		copy_bytes(area + at, name, nlen);
		out[0] = at;
		out[1] = nlen;
		at += nlen;
		copy_bytes(area + at, value, vlen);
		out[2] = at;
		out[3] = vlen;
		at += vlen;
	}
	copy_bytes(area + at, body, body_len);
	volatile u64 *rec = (volatile u64 *)(KVCPU + VC_BATCH + VB_RESP + VB_RESP_RECORD * i);
	rec[0] = status;
	rec[1] = table_off;
	rec[2] = count;
	rec[3] = at;
	rec[4] = body_len;
	rec[5] = 1; /* answered here */
	VB(VB_RESP_USED) = at + body_len;
	reset_memory();
	VB(VB_NEXT) = i + 1; /* the host times request i + 1 from when it first sees this */
	if (i + 1 < VB(VB_COUNT)) {
		next_request_in_place(VB(VB_REQS + 8 * i), VB(VB_REQS + 8 * (i + 1)));
		VCD(VCD_NEXT_RAX) = REQUEST_VA;
		return NEXT_REQUEST;
	}
	VB(VB_ACTIVE) = 0;
	return BATCH_DONE;
}

int fast_syscall(struct frame *f)
{
	u64 nr = f->rax;
	int r;
	if (nr == API_RESPOND || nr == API_RESPOND_AND_WAIT)
		return batch_respond(f);
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
