#!/usr/bin/env bash
# The users' install path, for tests/test_user_install.py: a fresh venv that is ComfyUI's Python before the
# extension (torch linked from the test venv: ComfyUI's install put it there; then ComfyUI's requirements),
# then `pip install -r requirements.txt` and nothing more (no -e, no extras, no test packages).
# Rebuilt from scratch whenever either requirements file or torch changes; otherwise kept (idempotent).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${ONESTEP_SR_CACHE:-$HOME/.cache/onestep-sr}
py=$cache/venv/bin/python           # the test venv (scripts/setup_host.sh made it)
venv=$cache/user-venv
host_requirements=$cache/comfy-requirements.txt   # ComfyUI's requirements.txt without torch (setup_host.sh)
stamp=$("$py" -m onestep_sr.testing.user_install stamp "$host_requirements" "$repo/requirements.txt")
stamp_file=$venv/.onestep-sr-user-venv
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  echo "user venv: $venv"
  exit 0
fi
rm -rf "$venv"
"${PYTHON:-python3.11}" -m venv "$venv"
"$py" -m onestep_sr.testing.user_install link-torch "$venv" > "$venv/linked-from-comfyui.txt"
"$venv/bin/python" -m pip install -q -r "$host_requirements"
"$venv/bin/python" -m pip install -q -r "$repo/requirements.txt"
echo "$stamp" > "$stamp_file"
echo "user venv: $venv"
