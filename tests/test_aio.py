"""Instances on their own vCPU threads, driven from asyncio."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import tenantvm
from tenantvm import Request, Tenant
from tenantvm.aio import AsyncTenantVM, CompletionQueue

pytestmark = pytest.mark.usefixtures("kvm")


def vcpu_threads() -> list[str]:
    """Status files of this process's vCPU threads."""
    out = []
    for task in Path("/proc/self/task").iterdir():
        if (task / "comm").read_text().strip() == "tenantvm-vcpu":
            out.append((task / "status").read_text())
    return out


def test_calls_failures_and_concurrency(apps: Path) -> None:
    async def main() -> None:
        queue = CompletionQueue(asyncio.get_running_loop())
        hello = Tenant(apps / "hello")
        vms = [AsyncTenantVM(hello, queue) for _ in range(3)]
        results = await asyncio.gather(*(vm.call(Request()) for vm in vms for _ in range(1)))
        assert [r.body for r in results] == [b"Hello World!"] * 3
        misbehave = AsyncTenantVM(Tenant(apps / "misbehave", timeout=0.3), queue)
        with pytest.raises(tenantvm.GuestFault):
            await misbehave.call(Request(path="/fault"))
        with pytest.raises(tenantvm.GuestTimeout):
            await misbehave.call(Request(path="/spin"))
        assert (await misbehave.call(Request(path="/count"))).body == b"1"
        # The event loop keeps running while a guest spins on its vCPU thread.
        ticks = 0
        spin = asyncio.ensure_future(misbehave.call(Request(path="/spin")))
        while not spin.done():
            ticks += 1
            await asyncio.sleep(0.01)
        assert ticks >= 10
        with pytest.raises(tenantvm.GuestTimeout):
            spin.result()
        assert misbehave.stats().calls == 4
        queue.close()

    asyncio.run(main())


def test_a_cancelled_call_still_completes_on_its_thread(apps: Path) -> None:
    async def main() -> None:
        queue = CompletionQueue(asyncio.get_running_loop())
        vm = AsyncTenantVM(Tenant(apps / "misbehave", ephemeral=False, timeout=5), queue)
        future = vm.call_raw(*Request(path="/sleep", query="ms=200")._native_args())
        waiter = asyncio.ensure_future(asyncio.shield(future))
        await asyncio.sleep(0.05)
        waiter.cancel()
        status, *_ = await future  # the call itself was not cancelled
        assert status == 200
        assert (await vm.call(Request(path="/count"))).body == b"2"
        queue.close()

    asyncio.run(main())


def test_vcpu_threads_are_seccomp_restricted(apps: Path) -> None:
    async def main() -> None:
        queue = CompletionQueue(asyncio.get_running_loop())
        vm = AsyncTenantVM(Tenant(apps / "hello"), queue)
        await vm.call(Request())
        statuses = vcpu_threads()
        assert statuses
        assert all("\nSeccomp:\t2\n" in s for s in statuses)
        # The calling thread is not restricted.
        assert "\nSeccomp:\t0\n" in Path(f"/proc/self/task/{os.getpid()}/status").read_text()
        del vm
        queue.close()

    asyncio.run(main())
