/* fault_gp.c — executes one privileged (or trapping) instruction from user
 * mode; each must fault inside the VM (#GP, or #BP for int3) and never
 * complete. Natively they die with SIGSEGV (SIGTRAP for int3).
 *
 *   fault_gp [hlt|cli|wrmsr|in|out|lgdt|mov-cr3|int3]     (default: hlt)
 *
 * Prints "fault_gp: executing NAME" to stderr first; if the instruction
 * somehow completes it prints "fault_gp: NAME did not fault" and exits 1.
 * Exit 2 = unknown NAME. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	const char *what = argc >= 2 ? argv[1] : "hlt";
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} gdtr = {0, 0};

	fprintf(stderr, "fault_gp: executing %s\n", what);
	fflush(stderr);

	if (!strcmp(what, "hlt"))
		__asm__ volatile("hlt");
	else if (!strcmp(what, "cli"))
		__asm__ volatile("cli");
	else if (!strcmp(what, "wrmsr")) /* IA32_TSC (0x10) <- 0 */
		__asm__ volatile("wrmsr" ::"c"(0x10), "a"(0), "d"(0));
	else if (!strcmp(what, "in")) {
		uint8_t v;
		__asm__ volatile("inb %%dx, %%al" : "=a"(v) : "d"(0x3f8));
		(void)v;
	} else if (!strcmp(what, "out"))
		__asm__ volatile("outb %%al, %%dx" ::"a"(0x41), "d"(0x3f8));
	else if (!strcmp(what, "lgdt"))
		__asm__ volatile("lgdt %0" ::"m"(gdtr));
	else if (!strcmp(what, "mov-cr3"))
		__asm__ volatile("mov %0, %%cr3" ::"r"(0UL));
	else if (!strcmp(what, "int3"))
		__asm__ volatile("int3");
	else {
		fprintf(stderr, "fault_gp: unknown instruction '%s'\n", what);
		return 2;
	}
	fprintf(stderr, "fault_gp: %s did not fault\n", what);
	return 1;
}
