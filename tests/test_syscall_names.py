"""The committed syscall-name table matches the kernel headers it was generated from.

Regenerate the table with::

    python tests/test_syscall_names.py > py/tenantvm/_syscall_names.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

HEADER = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
DEFINE = re.compile(r"^#define __NR_(\w+)\s+(\d+)\s*$")


def parse_header(text: str) -> dict[int, str]:
    table: dict[int, str] = {}
    for line in text.splitlines():
        m = DEFINE.match(line)
        if m:
            table[int(m.group(2))] = m.group(1)
    return table


def render(table: dict[int, str]) -> str:
    lines = [
        '"""x86-64 Linux system call numbers and names.',
        "",
        f"Generated from {HEADER} by tests/test_syscall_names.py; do not edit.",
        '"""',
        "",
        "LINUX_SYSCALLS: dict[int, str] = {",
        *(f'    {nr}: "{name}",' for nr, name in sorted(table.items())),
        "}",
        "",
    ]
    return "\n".join(lines)


@pytest.mark.skipif(not HEADER.exists(), reason=f"{HEADER} is not installed")
def test_table_matches_the_kernel_header():
    from tenantvm import _syscall_names

    from_header = parse_header(HEADER.read_text())
    assert len(from_header) > 300
    # Every number in the header has its name in the table (newer headers may add numbers;
    # then regenerate the table).
    assert {nr: _syscall_names.LINUX_SYSCALLS.get(nr) for nr in from_header} == from_header


def test_names_of_common_and_unknown_numbers():
    from tenantvm.runner import syscall_name

    assert syscall_name(0) == "read"
    assert syscall_name(1) == "write"
    assert syscall_name(60) == "exit"
    assert syscall_name(231) == "exit_group"
    assert syscall_name(0x10000) == "tenantvm_wait_for_request"
    assert syscall_name(0x10001) == "tenantvm_respond"
    assert syscall_name(0x100FF) == "tenantvm_nop"
    assert syscall_name(999) == "syscall_999"
    assert syscall_name(12345) == "syscall_12345"


if __name__ == "__main__":
    sys.stdout.write(render(parse_header(HEADER.read_text())))
