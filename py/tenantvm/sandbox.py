"""Host-side hardening of the threads that run guests.

A guest that found a bug in the VMM would act with the rights of the host thread that ran it.
:func:`restrict_current_thread` installs a seccomp filter on the calling thread that keeps
what a guest-running thread (and an asyncio loop on it) needs — KVM ioctls, memory without
``PROT_EXEC``, futexes, clocks, timers, signals, I/O on descriptors it already holds, new
threads — and refuses everything else with ``EPERM``: opening files, new sockets, ``execve``,
new processes, ``ptrace``, signals to other processes.  The HTTP server calls it on each
worker's event-loop thread once its pools are booted.
"""

from tenantvm import _native

__all__ = ["restrict_current_thread"]


def restrict_current_thread() -> None:
    """Restricts the calling thread with tenantvm's seccomp filter.

    Call it after everything the thread will need is set up (pools booted, files opened):
    the filter cannot be removed.  Other threads are not affected.

    Raises:
        HostError: The filter could not be installed.
    """
    _native.restrict_current_thread()
