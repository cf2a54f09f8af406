"""Small ELF helpers for the tests: build a tiny static executable, read program headers."""

from __future__ import annotations

import struct
from pathlib import Path


def tiny_elf(code: bytes, vaddr: int = 0x400000, bss: int = 0) -> bytes:
    """A minimal static ET_EXEC x86-64 ELF: one R+X PT_LOAD holding the headers and ``code``.

    The entry point is the first byte of ``code``; the program has no data segment (use the
    stack for memory).  ``bss`` adds that many zero bytes to the segment's size in memory.
    """
    ehdr_size, phdr_size = 64, 56
    entry = vaddr + ehdr_size + phdr_size
    total = ehdr_size + phdr_size + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 0, 0, 0)
    pt_load, pf_x, pf_r = 1, 1, 4
    phdr = struct.pack("<IIQQQQQQ", pt_load, pf_r | pf_x, 0, vaddr, vaddr, total, total + bss, 0x1000)
    return ehdr + phdr + code


def elf_info(path: str | Path) -> dict:
    """e_type, e_entry, e_phnum and the PT_LOAD segments (vaddr, memsz, flags) of an ELF64."""
    data = Path(path).read_bytes()
    e_type, _, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", data, 16)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    loads = []
    for i in range(e_phnum):
        p_type, p_flags, _, p_vaddr, _, _, p_memsz = struct.unpack_from("<IIQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1:
            loads.append((p_vaddr, p_memsz, p_flags))
    return {"type": e_type, "entry": e_entry, "phoff": e_phoff, "phnum": e_phnum, "loads": loads}
