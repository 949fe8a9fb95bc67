"""Where the project keeps what it fetches and makes outside the repository: $ONESTEP_SR_CACHE, else
~/.cache/onestep-sr (the scripts' venv and test host live there too: scripts/setup_venv.sh)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ONESTEP_SR_CACHE"


def cache_root() -> Path:
    """$ONESTEP_SR_CACHE, else ~/.cache/onestep-sr."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/onestep-sr").expanduser()


def runs_dir() -> Path:
    """Training runs and their exports: <cache>/runs."""
    return cache_root() / "runs"
