/* loop.c — spins forever on a volatile counter and never makes a syscall.
 * Used to test that the VMM's timeout / kill path interrupts a running vCPU. */
int main(void)
{
	volatile unsigned long counter = 0;
	for (;;)
		counter++;
}
