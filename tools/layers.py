"""Checks the layering of the code: no import cycles, and no lower layer importing a higher one.

    python tools/layers.py            # exits 1 and says what is wrong, 0 when all holds

Rust (crates/vmm/src): the module map in ``lib.rs`` lists the crate's modules lower layers
first (each bullet starts with the backticked names of one or more modules, read left to
right).  A module may use (``crate::…``, ``super::…``) only modules listed before it; every
module the crate declares must be on the map, once.  Inside a module, two of its submodules
(files) must not use each other either, except the pairs in ``KNOWN_MUTUAL`` (debt, each with
its reason).  Python (py/tenantvm): the modules of the package must not import each other in
a cycle, counting imports inside functions too (a cycle deferred to call time is still a
cycle of the design).

Run by ``make lint`` and by ``tests/test_layers.py``.  Reads the sources as text: comments,
strings and ``$crate`` in macros are ignored; a use through a ``use`` alias of a module is
counted where the alias is made.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATE = ROOT / "crates" / "vmm" / "src"
PACKAGE = ROOT / "py" / "tenantvm"

# Submodules of one module allowed to use each other, each with its reason (file-level module
# paths, ``::``-joined).  None today; an entry whose pair no longer uses each other must be
# removed.
KNOWN_MUTUAL: dict[frozenset[str], str] = {}


# --- Rust ---------------------------------------------------------------------------------


def strip_rust(src: str) -> str:
    """`src` with comments, string and char literals blanked (newlines kept, so lines count)."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * src.count("\n", i, j))
            i = j
            continue
        raw = re.match(r'r(#*)"', src[i : i + 64]) if src[i] == "r" and (i == 0 or not _ident(src[i - 1])) else None
        if raw:
            end = src.find('"' + raw.group(1), i + raw.end())
            j = n if end < 0 else end + 1 + len(raw.group(1))
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j
            continue
        if src[i] == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j + 1
            continue
        char = re.match(r"'(\\.[^']*|[^\\'])'", src[i : i + 16]) if src[i] == "'" else None
        if char:  # a char literal (a lifetime has no closing quote)
            out.append("' '")
            i += char.end()
            continue
        out.append(src[i])
        i += 1
    return "".join(out)


def _ident(c: str) -> bool:
    return c.isalnum() or c == "_"


def _group_items(text: str, start: int) -> tuple[list[str], int]:
    """The paths of the `use` group whose `{` is at `start` (nested groups joined), and its end."""
    items: list[str] = []
    depth, j, cur = 0, start, ""
    prefixes: list[str] = []
    while j < len(text):
        c = text[j]
        if c == "{":
            prefixes.append(cur.strip())
            depth, cur = depth + 1, ""
        elif c in ",}":
            if cur.strip() and cur.strip() not in ("self", "*"):
                items.append("".join(prefixes[1:]) + cur.strip())
            elif cur.strip() in ("self", "*") and len(prefixes) > 1:
                items.append("".join(prefixes[1:]).rstrip(":"))
            cur = ""
            if c == "}":
                prefixes.pop()
                depth -= 1
                if depth == 0:
                    return items, j + 1
        else:
            cur += c
        j += 1
    return items, j


PATH = re.compile(r"(?<![\w$])(crate|super|self)((?:\s*::\s*[A-Za-z_]\w*)*)(\s*::\s*\{)?")
INLINE_MOD = re.compile(r"\bmod\s+([A-Za-z_]\w*)\s*\{")


def _inline_mods(text: str) -> list[tuple[int, int, str]]:
    """(start, end, name) of every inline `mod name { … }` of stripped source `text`."""
    spans = []
    for m in INLINE_MOD.finditer(text):
        depth, j = 0, m.end() - 1
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        spans.append((m.start(), j, m.group(1)))
    return spans


def rust_uses(module: tuple[str, ...], src: str) -> Iterator[tuple[tuple[str, ...], int]]:
    """(absolute path, line) of every `crate::`/`super::`/`self::` path in a file of `module`."""
    text = strip_rust(src)
    spans = _inline_mods(text)
    for m in PATH.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        inner = tuple(name for s, e, name in spans if s < m.start() < e)
        here = module + inner
        head = [m.group(1)] + [p for p in re.split(r"\s*::\s*", m.group(2)) if p]
        tails = [[]]
        if m.group(3):
            items, _ = _group_items(text, m.end() - 1)
            tails = [[p for p in re.split(r"\s*::\s*", item) if p] for item in items] or [[]]
        for tail in tails:
            path = head + tail
            if path[0] == "crate":
                absolute = path[1:]
            else:
                base = list(here)
                rest = path
                while rest and rest[0] in ("super", "self"):
                    if rest[0] == "super":
                        if not base:
                            break
                        base.pop()
                    rest = rest[1:]
                absolute = base + rest
            yield tuple(absolute), line


def crate_modules(crate: Path) -> dict[tuple[str, ...], Path]:
    """Every file module of the crate, by its path (`lib.rs` is the root, `()`)."""
    mods = {}
    for f in crate.rglob("*.rs"):
        parts = f.relative_to(crate).with_suffix("").parts
        if parts[-1] in ("mod", "lib"):
            parts = parts[:-1]
        mods[tuple(parts)] = f
    return mods


def module_map(lib: str) -> list[str]:
    """The modules of lib.rs's module map, lowest layer first."""
    section = lib.split("//! # Module map", 1)[1].split("\n//! #", 1)[0]
    order: list[str] = []
    for line in section.splitlines():
        m = re.match(r"//! - ((?:`\w+`(?:,\s*)?)+)", line)
        if m:
            order += re.findall(r"`(\w+)`", m.group(1))
    return order


def declared_modules(lib: str) -> list[str]:
    """The modules lib.rs declares (`mod x;`)."""
    return re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", strip_rust(lib), re.M)


def check_rust(crate: Path = CRATE) -> list[str]:
    """What is wrong with the layering of the crate whose `src` is `crate` (empty: nothing)."""
    problems: list[str] = []
    lib = (crate / "lib.rs").read_text()
    order, declared = module_map(lib), declared_modules(lib)
    for name in sorted(set(declared) - set(order)):
        problems.append(f"lib.rs: module `{name}` is not on the module map")
    for name in sorted(set(order) - set(declared)):
        problems.append(f"lib.rs: the module map lists `{name}`, which the crate does not declare")
    for name in sorted({n for n in order if order.count(n) > 1}):
        problems.append(f"lib.rs: the module map lists `{name}` more than once")
    rank = {name: i for i, name in enumerate(order)}
    mods = crate_modules(crate)
    uses: dict[tuple[str, ...], dict[tuple[str, ...], int]] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for module, f in sorted(mods.items()):
        if not module:
            continue  # lib.rs: the façade re-exports every layer
        for path, line in rust_uses(module, f.read_text()):
            target = next((path[:k] for k in range(len(path), 0, -1) if path[:k] in mods), None)
            if target is None or target == module:
                continue
            where = f"{f.relative_to(crate)}:{line}"
            uses.setdefault(module, {}).setdefault(target, line)
            a, b = module[0], target[0]
            if a != b and a in rank and b in rank and rank[b] > rank[a] and (where, target) not in seen:
                seen.add((where, target))
                problems.append(f"{where}: `{a}` uses `{'::'.join(target)}`, a higher layer on lib.rs's module map")
    for a, targets in sorted(uses.items()):
        for b in sorted(targets):
            # A module and its own submodule are one piece of code split in files (e.g. an `impl`
            # of the parent's type): only siblings, or cousins, count.
            related = a == b[: len(a)] or b == a[: len(b)]
            if a < b and a in uses.get(b, {}) and a[0] == b[0] and not related:
                pair = frozenset({"::".join(a), "::".join(b)})
                if pair not in KNOWN_MUTUAL:
                    problems.append(
                        f"`{'::'.join(a)}` (line {targets[b]}) and `{'::'.join(b)}` (line {uses[b][a]}) use each other"
                    )
    for pair in KNOWN_MUTUAL:
        x, y = (tuple(p.split("::")) for p in sorted(pair))
        if not (y in uses.get(x, {}) and x in uses.get(y, {})):
            problems.append(f"tools/layers.py: KNOWN_MUTUAL lists {sorted(pair)}, which no longer use each other")
    return problems


# --- Python -------------------------------------------------------------------------------


def python_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """For each module of the package, the package's modules it imports (anywhere in it)."""
    names = {p.stem for p in package.glob("*.py")} - {"__init__", "__main__"}
    graph: dict[str, set[str]] = {}
    for name in sorted(names):
        tree = ast.parse((package / f"{name}.py").read_text())
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or base.startswith("tenantvm"):
                    mod = base.removeprefix("tenantvm").lstrip(".") if node.level == 0 else base
                    if mod:
                        deps.add(mod.split(".")[0])
                    else:  # `from . import x`
                        deps.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("tenantvm."):
                        deps.add(a.name.split(".")[1])
        graph[name] = (deps & names) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def check_python(package: Path = PACKAGE) -> list[str]:
    """An import cycle among the package's modules, if there is one."""
    cycle = find_cycle(python_imports(package))
    return [f"py/tenantvm: import cycle {' -> '.join(cycle)}"] if cycle else []


def main() -> int:
    """Prints every problem; the exit status says whether there was any."""
    problems = check_rust() + check_python()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
