"""The crate keeps the layers of its module map, and neither the crate nor the package has an
import cycle (tools/layers.py; also run by ``make lint``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import layers


def test_the_crate_keeps_its_module_map_and_the_package_has_no_import_cycle() -> None:
    assert layers.check_rust() == []
    assert layers.check_python() == []


@pytest.fixture
def crate(tmp_path: Path) -> Path:
    """A copy of the crate's sources, to break."""
    shutil.copytree(layers.CRATE, tmp_path / "src")
    return tmp_path / "src"


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.mark.parametrize(
    "line",
    [
        "use crate::tenant::TenantConfig;",
        "use crate::{error::Error, tenant::{config::TenantConfig, Tenant}};",
        "fn f() -> Option<crate::tenant::Tenant> { None }",
        "use super::tenant;",
    ],
)
def test_a_lower_layer_using_a_higher_one_is_found(crate: Path, line: str) -> None:
    append(crate / "memory" / "mapping.rs" if line.startswith("use super") else crate / "paging.rs", f"\n{line}\n")
    if line.startswith("use super"):
        # super of memory::mapping is memory: not a use of tenant at all
        assert layers.check_rust(crate) == []
        append(crate / "paging.rs", f"\n{line}\n")  # super of paging is the crate root
    problems = layers.check_rust(crate)
    assert problems
    assert all("`paging` uses `tenant" in p for p in problems), problems


def test_comments_strings_and_macro_crate_paths_are_not_uses(crate: Path) -> None:
    append(
        crate / "paging.rs",
        "\n// crate::tenant::Tenant\n/* crate::tenant::Tenant /* nested */ crate::tenant */\n"
        'const _S: &str = "crate::tenant::Tenant";\nconst _R: &str = r#"crate::tenant"#;\n'
        "macro_rules! m { () => { $crate::tenant::Tenant }; }\n",
    )
    assert layers.check_rust(crate) == []


def test_submodules_that_use_each_other_are_found(crate: Path) -> None:
    # futex uses time (sleep_for); time using futex closes a cycle
    append(crate / "syscalls" / "time.rs", "\n#[allow(unused)]\nuse super::futex::futex;\n")
    problems = layers.check_rust(crate)
    assert any("`syscalls::futex`" in p and "`syscalls::time`" in p and "each other" in p for p in problems), problems


def test_the_module_map_must_list_every_module(crate: Path) -> None:
    lib = crate / "lib.rs"
    lib.write_text(lib.read_text().replace("//! - `restore_view`", "//! - restore_view"))
    assert layers.check_rust(crate) == ["lib.rs: module `restore_view` is not on the module map"]


def test_an_import_cycle_in_the_package_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import g\n")
    (tmp_path / "c.py").write_text("from tenantvm.a import x\n")
    assert layers.check_python(tmp_path) == ["py/tenantvm: import cycle a -> b -> c -> a"]
    (tmp_path / "c.py").write_text("import os\n")
    assert layers.check_python(tmp_path) == []
