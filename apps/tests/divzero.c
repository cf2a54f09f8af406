/* divzero.c — integer division by zero with volatile operands so the compiler
 * cannot fold it away (SIGFPE natively, #DE inside the VM). */
#include <stdio.h>

int main(void)
{
	volatile int num = 42, den = 0;
	int q = num / den;
	printf("not reached: %d\n", q);
	return 0;
}
