"""The scripts and benchmarks keep their runs in $ONESTEP_SR_CACHE like everything else, and the test
command installs no more than it needs (issue 15)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from onestep_sr.files.cache import cache_root, runs_dir

REPO = Path(__file__).resolve().parent.parent


def test_the_cache_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ONESTEP_SR_CACHE", str(tmp_path))
    assert cache_root() == tmp_path and runs_dir() == tmp_path / "runs"
    monkeypatch.delenv("ONESTEP_SR_CACHE")
    assert cache_root() == Path.home() / ".cache" / "onestep-sr"


@pytest.mark.parametrize("script, run", [("scripts/train_default.py", "default"),
                                         ("scripts/train_adapter.py", "adapter")])
def test_training_scripts_default_to_a_run_in_the_cache(tmp_path, script, run):
    result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                            env={**os.environ, "ONESTEP_SR_CACHE": str(tmp_path), "COLUMNS": "400"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"(default: {tmp_path / 'runs' / run})" in result.stdout


def test_the_adapter_benchmark_reads_the_adapter_from_the_cache(tmp_path):
    code = "import adapter_quality; print(adapter_quality.DEFAULT_ADAPTER)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO / "benchmarks", capture_output=True, text=True,
                            env={**os.environ, "ONESTEP_SR_CACHE": str(tmp_path)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "runs" / "adapter.safetensors")


def test_only_files_cache_spells_the_cache_location():
    """One place knows where the cache is: a copy elsewhere is how the three scripts came to ignore it (the
    tests set the variable, they do not read it)."""
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    spelled = [name for name in listed.stdout.split() if name != "files/cache.py" and not name.startswith("tests/")
               and re.search(r"\.cache/onestep-sr|\.cache\W+onestep-sr|environ[^\n]*ONESTEP_SR_CACHE",
                             (REPO / name).read_text())]
    assert spelled == []


def test_apt_installs_skip_recommended_packages():
    """chromium's recommends are 116 packages (and upgrade systemd and perl on the host)."""
    installs = [line for path in sorted((REPO / "scripts").glob("*.sh"))
                for line in path.read_text().splitlines() if re.search(r"apt-get\s.*\binstall\b", line)]
    assert installs and all("--no-install-recommends" in line for line in installs), installs


def _gpu_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_benchmark", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_section_replaces_itself_and_the_suite_keeps_it(tmp_path):
    gpu = _gpu_benchmark()
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# OneStep SR benchmarks\n\nthe CPU figures\n")
    first = f"{gpu.GPU_START}\n## GPU (CUDA)\nfirst run\n{gpu.GPU_END}\n"
    gpu.write_section(report, first)
    gpu.write_section(report, first.replace("first", "second"))
    assert report.read_text() == (f"# OneStep SR benchmarks\n\nthe CPU figures\n\n{gpu.GPU_START}\n## GPU (CUDA)\n"
                                  f"second run\n{gpu.GPU_END}\n")
    assert gpu.kept_section(report) == f"{gpu.GPU_START}\n## GPU (CUDA)\nsecond run\n{gpu.GPU_END}\n"
    assert gpu.kept_section(tmp_path / "absent.md") == ""


def test_the_gpu_benchmark_without_a_gpu_says_what_it_skipped_and_writes_nothing(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("unchanged\n")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--output", str(report)],
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU visible to torch; skipped: the one-click node on the default model" in result.stdout
    assert report.read_text() == "unchanged\n"


def test_train_adapter_refuses_a_bad_perceptual_window_before_touching_the_run(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, str(REPO / "scripts/train_adapter.py"), "--output-dir", str(run),
                             "--objective", "adversarial", "--perceptual-weight", "1", "--perceptual-samples", "0"],
                            capture_output=True, text=True, env={**os.environ, "ONESTEP_SR_CACHE": str(tmp_path)},
                            timeout=120)
    assert result.returncode == 2
    assert "--objective adversarial: the perceptual term needs perceptual_samples >= 1" in result.stderr
    assert not run.exists()
