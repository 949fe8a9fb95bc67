"""requirements.txt (what ComfyUI Manager and `pip install -r requirements.txt` install into ComfyUI's Python)
and pyproject's dependencies declare every package the extension's code imports (issue 15: the trainer's
accelerate arrived only because peft happens to depend on it)."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Not the extension's code: the tests, their fixtures, benchmarks and developer scripts (the dev extras).
NOT_SHIPPED = ("tests", "testing", "benchmarks", "scripts")
# What ComfyUI itself is and brings: its modules, and torch, which its Python has before any extension.
HOST_MODULES = {"comfy", "comfy_execution", "comfy_api", "folder_paths", "latent_preview", "node_helpers", "nodes",
                "server", "execution", "torch"}
# Imported only by training/photos.py's registry of the default model's own training photos and by the
# perceptual loss of the realism objectives (training/perceptual.py), which only the scripts and benchmarks
# train with (the dev and train extras install them; no node computes a perceptual loss).
DEVELOPER_ONLY = {"skimage", "sklearn", "matplotlib", "stlpips_pytorch"}


def third_party_imports() -> dict[str, set[str]]:
    """{top-level module: files} over the extension's code, imports inside functions included."""
    found = {}
    for path in REPO.rglob("*.py"):
        relative = path.relative_to(REPO)
        if relative.parts[0] in NOT_SHIPPED or relative.parts[0].startswith(".") or "test-artifacts" in relative.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(relative))
    return found


def requirement_names(lines) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def distributions(module: str) -> set[str]:
    return {name.lower().replace("_", "-") for name in importlib.metadata.packages_distributions().get(module, [])}


def test_the_scan_sees_the_imports_inside_functions():
    imports = third_party_imports()
    assert "training/trainer.py" in imports["accelerate"]  # imported inside Trainer.__init__
    assert "processing/tiling.py" in imports["psutil"]  # imported inside free_memory


def test_requirements_txt_and_pyproject_declare_every_import():
    required = requirement_names((REPO / "requirements.txt").read_text().splitlines())
    declared = requirement_names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    missing = {}
    for module, files in sorted(third_party_imports().items()):
        if module in HOST_MODULES | DEVELOPER_ONLY:
            continue
        names = distributions(module)
        assert names, f"{module} (imported in {sorted(files)}) is not installed in the test venv"
        for source, listed in (("requirements.txt", required), ("pyproject.toml", declared - {"torch"})):
            if not names & listed:
                missing.setdefault(source, []).append(f"{module} ({sorted(names)[0]}, in {sorted(files)[0]})")
    assert not missing, f"imported but not declared: {missing}"
