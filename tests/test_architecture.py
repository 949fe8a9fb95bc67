"""The house rules of ARCHITECTURE.md, read from the code's own imports: every import runs downward,
ComfyUI is imported by bridge/ and nodes/ only, node files import the bridge and never each other,
no import cycles, and the room sizes the project keeps."""

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# part -> the parts it may import (ARCHITECTURE.md's table)
MAY_IMPORT = {
    "files": set(),
    "samplers": set(),
    "processing": {"files"},
    "models": {"files", "samplers", "processing"},
    "adapters": {"files"},
    "training": {"files", "samplers", "processing", "models", "adapters"},
    "testing": {"files", "samplers", "processing", "models", "adapters", "training", "cli"},
    "bridge": {"files", "samplers", "processing", "models", "adapters", "training"},
    "nodes": {"bridge"},
    "cli": {"files", "models", "processing", "adapters"},
    "__init__": {"nodes"},
}
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_execution", "comfy_api", "folder_paths", "nodes", "node_helpers",
                 "latent_preview", "execution", "server", "utils"}
# ComfyUI test harness files: they import ComfyUI by design and are never imported at run time
COMFY_HARNESS = {"testing/comfy_host.py", "testing/tiny_models.py"}


def package_files():
    return sorted(p for part in MAY_IMPORT for p in ([REPO / f"{part}.py"] if (REPO / f"{part}.py").is_file()
                                                     else (REPO / part).glob("*.py")))


def part_of(path: Path) -> str:
    relative = path.relative_to(REPO)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def module_of(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imports(path: Path):
    """(module of the package or None, top-level name of an outside module or None) per import in `path`."""
    tree = ast.parse(path.read_text())
    package = module_of(path).split(".") if path.name == "__init__.py" else module_of(path).split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield None, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield None, node.module.split(".")[0]
                continue
            base = package[:len(package) - node.level + 1]
            target = ".".join(filter(None, [*base, node.module or ""]))
            if node.module is None:  # from . import x
                for alias in node.names:
                    yield ".".join(filter(None, [*base, alias.name])), None
            else:
                yield target, None


def test_every_import_runs_downward_and_comfyui_stays_in_the_bridge_and_nodes():
    problems = []
    for path in package_files():
        part, relative = part_of(path), str(path.relative_to(REPO))
        for inside, outside in imports(path):
            if inside is not None:
                target = inside.split(".")[0] or "__init__"
                if target != part and target not in MAY_IMPORT[part]:
                    problems.append(f"{relative} imports {inside} ({part} may import {sorted(MAY_IMPORT[part])})")
            elif outside in COMFY_MODULES and part not in ("bridge", "nodes") and relative not in COMFY_HARNESS:
                problems.append(f"{relative} imports ComfyUI's {outside}")
            elif outside == "tests":
                problems.append(f"{relative} imports from tests/")
    assert not problems, "\n".join(problems)


def test_node_files_import_the_bridge_and_never_each_other():
    for path in (REPO / "nodes").glob("*.py"):
        if path.name == "__init__.py":
            continue
        inside = [target for target, _ in imports(path) if target]
        assert all(target.startswith("bridge.") for target in inside), f"{path.name} imports {inside}"


def test_there_are_no_import_cycles():
    graph = {module_of(path): {t for t, _ in imports(path) if t} for path in package_files()}
    modules = set(graph)

    def resolve(target):  # `from .x import y` may name the module x or the name y of x
        return target if target in modules else target.rsplit(".", 1)[0]

    graph = {m: {resolve(t) for t in targets if resolve(t) in modules and resolve(t) != m} for m, targets in graph.items()}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(module):] + [module]))
        state[module] = "open"
        for target in sorted(graph[module]):
            visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    bad = tmp_path / "samplers"
    bad.mkdir()
    (bad / "leak.py").write_text("from ..training.trainer import Trainer\nimport comfy.samplers\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = list(imports(bad / "leak.py"))
    assert ("training.trainer", None) in found and (None, "comfy") in found
    with pytest.raises(AssertionError, match="samplers/leak.py imports training.trainer"):
        test_every_import_runs_downward_and_comfyui_stays_in_the_bridge_and_nodes()


def test_node_and_training_files_stay_short():
    long = {str(p.relative_to(REPO)): n for folder in ("nodes", "training", "bridge") for p in (REPO / folder).glob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these by what they are for: {long}"
