#!/usr/bin/env bash
# The main job on a fresh machine: install OneStep SR and upscale the bundled example photo x4
# with the shipped default model (CPU is fine). Output: upscaled/example_x4.png
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=$(bash "$repo/scripts/setup_venv.sh")
"$py" -m onestep_sr.cli upscale "$repo/assets/example.png" -o "${1:-upscaled}" --scale 4 --overwrite
