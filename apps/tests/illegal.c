/* illegal.c — executes ud2, the architecturally undefined instruction
 * (SIGILL natively, #UD inside the VM). */
int main(void)
{
	__asm__ volatile("ud2");
	return 0;
}
