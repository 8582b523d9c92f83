"""The package's layering: only engine/ talks to NATS, core/ is pure, modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import spacegrid

PACKAGE = Path(spacegrid.__file__).parent
MODULE_LINES_MAX = 500


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_engine_imports_nats() -> None:
    """Every import of nats (the client library) is under spacegrid/engine/: the rest uses engine.transport."""
    offenders = [str(path.relative_to(PACKAGE)) for path in _modules()
                 if path.relative_to(PACKAGE).parts[0] != "engine"
                 and any(name == "nats" or name.startswith("nats.") for name in _imports(path))]
    assert offenders == []


def test_core_imports_neither_nats_nor_the_store_nor_the_engine() -> None:
    """core/ holds pure state machines: no NATS, no store backends, no engine, no asyncio."""
    forbidden = ("nats", "spacegrid.store", "spacegrid.engine", "spacegrid.unit", "spacegrid.client", "asyncio")
    offenders = {str(path.relative_to(PACKAGE)): sorted(name for name in _imports(path) if name.startswith(forbidden))
                 for path in (PACKAGE / "core").glob("*.py")}
    assert {module: names for module, names in offenders.items() if names} == {}


def test_core_imports_in_a_process_without_nats() -> None:
    """`import spacegrid.core...` works where the nats package cannot be imported at all."""
    code = ("import sys; sys.modules['nats'] = None; "
            "import spacegrid.core.partition, spacegrid.core.lifecycle, spacegrid.core.ownership, spacegrid.core.eviction")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_no_module_is_over_the_size_bound() -> None:
    """No module of the package has more than 500 lines (a module owns one concept)."""
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in _modules()}
    assert {module: lines for module, lines in sizes.items() if lines > MODULE_LINES_MAX} == {}


def test_every_module_says_what_it_owns() -> None:
    """Every non-empty module opens with a docstring."""
    missing = [str(path.relative_to(PACKAGE)) for path in _modules()
               if path.read_text().strip() and ast.get_docstring(ast.parse(path.read_text())) is None]
    assert missing == []


def test_every_test_says_what_it_checks() -> None:
    """Every test function under tests/ opens with a docstring saying what behaviour it verifies."""
    tests_dir = Path(__file__).resolve().parents[1]
    missing = [f"{path.relative_to(tests_dir)}::{node.name}" for path in sorted(tests_dir.rglob("test_*.py"))
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
               and ast.get_docstring(node) is None]
    assert missing == []
