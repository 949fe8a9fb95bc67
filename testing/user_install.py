"""The Python a ComfyUI user runs the extension in, for tests/test_user_install.py: ComfyUI's Python before the
extension (torch, which ComfyUI's install put there, and ComfyUI's requirements), then `pip install -r
requirements.txt` and nothing else (no -e, no extras). scripts/setup_user_venv.sh builds it.

    python -m onestep_sr.testing.user_install link-torch <venv>   # run with the test venv's python
    python -m onestep_sr.testing.user_install stamp <file>...     # what the venv is built from

links the test venv's torch and torchvision (and what they need: triton, the CUDA wheels, ...) into the fresh
venv instead of installing them again (gigabytes): a user's ComfyUI has torch before any extension.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import sysconfig
from pathlib import Path

HOST_PACKAGES = ("torch", "torchvision")
STAMP = ".onestep-sr-user-venv"  # in the venv: the stamp of what it was built from


def closure(names) -> list[importlib.metadata.Distribution]:
    """The installed distributions `names` need, themselves included (their requirements' markers and
    extras evaluated here); requirements that are not installed are left out."""
    from packaging.requirements import Requirement

    found, todo = {}, [(name, frozenset()) for name in names]
    while todo:
        name, extras = todo.pop()
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        key = (dist.metadata["Name"].lower().replace("_", "-"), extras)
        if key in found:
            continue
        found[key] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                 for extra in {"", *extras}):
                todo.append((requirement.name, frozenset(requirement.extras)))
    unique = {dist.metadata["Name"]: dist for dist in found.values()}
    return [unique[name] for name in sorted(unique)]


def top_level_entries(dist: importlib.metadata.Distribution) -> set[str]:
    """The names directly in site-packages that `dist` installed (packages, modules, its .dist-info)."""
    return {Path(file).parts[0] for file in dist.files or [] if not str(file).startswith("..")}


def link_host_packages(venv: Path) -> list[str]:
    """Symlink HOST_PACKAGES and their closure from this interpreter's site-packages into `venv`'s."""
    source = Path(sysconfig.get_paths()["purelib"])
    target = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    linked = []
    for dist in closure(HOST_PACKAGES):
        for entry in sorted(top_level_entries(dist)):
            link = target / entry
            if not link.exists() and (source / entry).exists():
                link.symlink_to(source / entry)
        linked.append(f"{dist.metadata['Name']}=={dist.version}")
    return linked


def stamp(*files: Path) -> str:
    """What the user venv was built from: the requirement files' bytes and the linked torch's version."""
    digest = hashlib.sha256(importlib.metadata.version("torch").encode())
    for file in files:
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


if __name__ == "__main__":
    command, *arguments = sys.argv[1:] or [""]
    if command == "link-torch" and len(arguments) == 1:
        print("\n".join(link_host_packages(Path(arguments[0]))))
    elif command == "stamp" and arguments:
        print(stamp(*map(Path, arguments)))
    else:
        sys.exit("usage: python -m onestep_sr.testing.user_install link-torch <venv> | stamp <file>...")
