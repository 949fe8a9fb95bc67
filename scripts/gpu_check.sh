#!/usr/bin/env bash
# The device check, at most 8 minutes on one CUDA GPU: the cuda-marked tests (tests/test_cuda.py: the CLI on
# cuda, the pipeline, the one-click node on the default model and on tiny FLUX / SD3 models in fp16 / bf16,
# tiling) with the in-process ComfyUI host on the GPU, then benchmarks/gpu.py, which writes the GPU section
# of BENCHMARKS.md; then, on any machine, the device paths a CPU checks (the MPS fallback forced, the device
# and precision choice, the 2-process folder run). Without a GPU it says what it skipped.
# Needs the test host (bash scripts/setup_host.sh). Exit status 1 when anything failed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${ONESTEP_SR_CACHE:-$HOME/.cache/onestep-sr}
py=${ONESTEP_SR_PYTHON:-$cache/venv/bin/python}
export ONESTEP_SR_COMFYUI=${ONESTEP_SR_COMFYUI:-$cache/comfyui-0.3.75}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$repo"
status=0
if "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: $("$py" -c 'import torch; print(torch.cuda.get_device_name())')"
  ONESTEP_SR_HOST_DEVICE=cuda timeout 300 "$py" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py || status=1
  timeout 180 "$py" benchmarks/gpu.py || status=1
else
  count=$("$py" -m pytest -q --collect-only -p no:cacheprovider tests/test_cuda.py 2>/dev/null | grep -c "::")
  echo "gpu_check: no CUDA GPU visible to torch: SKIPPED the $count cuda tests of tests/test_cuda.py and the GPU section of BENCHMARKS.md"
  "$py" benchmarks/gpu.py || status=1
fi
echo "gpu_check: the device paths a CPU checks"
timeout 300 "$py" -m pytest -q -p no:cacheprovider tests/test_degrade.py tests/test_cli.py \
  -k "mps or fallback or device or precision or launched" || status=1
exit $status
