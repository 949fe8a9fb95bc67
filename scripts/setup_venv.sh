#!/usr/bin/env bash
# Create the project's Python 3.11 venv (cached outside the repository) and install the
# extension into it, editable, with the test extras. Idempotent. Prints the venv's python.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${ONESTEP_SR_CACHE:-$HOME/.cache/onestep-sr}
venv=$cache/venv
python=${PYTHON:-python3.11}
mkdir -p "$cache"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
py=$venv/bin/python
if ! "$py" -c 'import torch, torchvision' 2>/dev/null; then
  # torchvision from PyPI does not import beside the CPU-only torch 2.13 file; this pair does.
  "$py" -m pip install -q torch==2.14.1 torchvision==0.29.1 >&2
fi
"$py" -m pip install -q -e "$repo[dev]" >&2
echo "$py"
