/* nullwrite.c — stores to address 0, which must page-fault (SIGSEGV natively,
 * a #PF on an unmapped page inside the VM). */
int main(void)
{
	volatile int *p = 0;
	*p = 1;
	return 0;
}
