/* exitcode.c — exits with a chosen status, to test exit-code propagation.
 *   exitcode N         -> return N from main (exit() path, atexit, stdio flush)
 *   exitcode group N   -> raw exit_group(N) syscall, bypassing libc exit
 * No argument means 0. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "group") == 0) {
		syscall(SYS_exit_group, atoi(argv[2]));
		return 99; /* not reached */
	}
	return argc >= 2 ? atoi(argv[1]) : 0;
}
