"""The architecture as tests: the import contracts in pyproject.toml (import-linter), and no
function-local import of the project's own modules unless it says why it is lazy.

ARCHITECTURE.md explains the layers; these tests keep them from eroding one import at a time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("collector", "analyzer", "agentwatch")


def test_the_import_contracts_hold():
    """Layers agentwatch > analyzer > collector; paging and containment independent; detectors
    pure; ingest stages one way (``[tool.importlinter]`` in pyproject.toml)."""
    # in a process of its own: import-linter reconfigures logging, which would break the log
    # capture of every test after this one
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def function_local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each import of a project module inside a function, unless the line or
    the one above says ``lazy:`` (a deliberate deferral, e.g. chDB's 500 MB) or it sits under
    ``if TYPE_CHECKING``."""
    source = path.read_text()
    lines = source.splitlines()
    found = []

    def visit(node, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            checking = type_checking or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            if isinstance(child, ast.Import | ast.ImportFrom) and in_function and not checking:
                names = (
                    [child.module or ""]
                    if isinstance(child, ast.ImportFrom)
                    else [a.name for a in child.names]
                )
                ours = [n for n in names if n.split(".")[0] in PACKAGES]
                said = " ".join(lines[max(child.lineno - 2, 0) : child.lineno])
                if ours and "lazy:" not in said:
                    found.append((child.lineno, ours[0]))
            visit(child, inside, checking)

    visit(ast.parse(source), False, False)
    return found


def test_no_function_local_imports_dodge_a_cycle():
    offenders = {
        f"{path.relative_to(ROOT)}:{line}": module
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in function_local_imports(path)
    }
    assert offenders == {}, (
        "import these at the top of the module (the layers allow it), or say why the import is"
        " deferred with a '# lazy: <reason>' comment on it"
    )


def test_the_local_import_check_can_fail(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from analyzer.session import SessionState\n"
        "def f():\n    from collector.store import Store\n"
        "def g():\n    # lazy: chDB loads 500 MB\n    from collector.store.embedded import E\n"
    )
    assert function_local_imports(module) == [(5, "collector.store")]


def test_the_image_copies_every_package():
    """deploy/Dockerfile installs the project from the packages it copies: a package left out
    builds an image whose ``agentwatch`` cannot start."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    build, runtime = dockerfile.split("\nFROM ")[1:]  # two stages: compiler, then slim
    for package in PACKAGES:
        assert f"COPY {package} ./{package}" in build, package
    # the C reader: setup.py builds collector/_otlp_reader.c (copied with collector/) in the
    # build stage, and the runtime stage takes the built tree, not the sources again
    assert "COPY pyproject.toml setup.py" in build and "setup.py build_ext" in build
    assert (ROOT / "collector" / "_otlp_reader.c").is_file()
    assert "COPY --from=build /app /app" in runtime and "gcc" not in runtime
