/* showenv.c — dumps the initial process state the loader built: argc, argv,
 * envp and the ELF auxiliary vector, one item per line for easy parsing:
 *
 *   argc=N
 *   argv[I]=STRING
 *   env=KEY=VALUE
 *   auxv TYPE VALUE_DEC VALUE_HEX NAME      (raw entries, in stack order)
 *   AT_RANDOM=<32 hex digits>               (the 16 bytes AT_RANDOM points to)
 *   AT_PLATFORM=STRING
 *   AT_EXECFN=STRING
 *   getauxval(AT_xxx)=VALUE_DEC             (what libc itself parsed)
 *   done
 *
 * The auxv is found the way the kernel lays it out: after envp's NULL. */
#define _GNU_SOURCE
#include <elf.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/auxv.h>

struct auxname {
	unsigned long type;
	const char *name;
};

static const struct auxname auxnames[] = {
	{0, "AT_NULL"},        {3, "AT_PHDR"},      {4, "AT_PHENT"},
	{5, "AT_PHNUM"},       {6, "AT_PAGESZ"},    {7, "AT_BASE"},
	{8, "AT_FLAGS"},       {9, "AT_ENTRY"},     {11, "AT_UID"},
	{12, "AT_EUID"},       {13, "AT_GID"},      {14, "AT_EGID"},
	{15, "AT_PLATFORM"},   {16, "AT_HWCAP"},    {17, "AT_CLKTCK"},
	{23, "AT_SECURE"},     {24, "AT_BASE_PLATFORM"},
	{25, "AT_RANDOM"},     {26, "AT_HWCAP2"},   {27, "AT_RSEQ_FEATURE_SIZE"},
	{28, "AT_RSEQ_ALIGN"}, {31, "AT_EXECFN"},   {33, "AT_SYSINFO_EHDR"},
	{51, "AT_MINSIGSTKSZ"},
};

static const char *auxname(unsigned long type)
{
	for (size_t i = 0; i < sizeof auxnames / sizeof auxnames[0]; i++)
		if (auxnames[i].type == type)
			return auxnames[i].name;
	return "?";
}

int main(int argc, char **argv, char **envp)
{
	char **e;

	printf("argc=%d\n", argc);
	for (int i = 0; i < argc; i++)
		printf("argv[%d]=%s\n", i, argv[i]);
	for (e = envp; *e; e++)
		printf("env=%s\n", *e);

	/* The auxv starts right after envp's terminating NULL pointer. */
	Elf64_auxv_t *av = (Elf64_auxv_t *)(e + 1);
	for (;; av++) {
		unsigned long type = av->a_type, val = av->a_un.a_val;
		printf("auxv %lu %lu 0x%lx %s\n", type, val, val, auxname(type));
		if (type == AT_NULL)
			break;
		if (type == AT_RANDOM && val) {
			const unsigned char *r = (const unsigned char *)val;
			printf("AT_RANDOM=");
			for (int i = 0; i < 16; i++)
				printf("%02x", r[i]);
			printf("\n");
		} else if (type == AT_PLATFORM && val) {
			printf("AT_PLATFORM=%s\n", (const char *)val);
		} else if (type == AT_EXECFN && val) {
			printf("AT_EXECFN=%s\n", (const char *)val);
		}
	}

	/* What libc picked up from the same vector. */
	static const unsigned long q[] = {AT_PAGESZ, AT_PHDR,   AT_PHNUM,  AT_ENTRY,
					  AT_UID,    AT_EUID,   AT_GID,    AT_EGID,
					  AT_HWCAP,  AT_CLKTCK, AT_SECURE, AT_RANDOM};
	for (size_t i = 0; i < sizeof q / sizeof q[0]; i++)
		printf("getauxval(%s)=%lu\n", auxname(q[i]), getauxval(q[i]));
	printf("done\n");
	return 0;
}
