"""Load and faults on a real ComfyUI server of its own (issue 15; testing/server_stress.py): 50 prompts of
mixed sizes queued at once all complete with the peak RSS flat after the second and no temporary file left;
a tiled upscale and a training run interrupted at random moments leave the server serving, save nothing
partial, and the training resumes from its last checkpoint. benchmarks/robustness.py runs 20 points each."""

import pytest

from onestep_sr.testing import comfy_host as host_lib
from onestep_sr.testing import server_stress

pytestmark = pytest.mark.server
POINTS = 3  # per fault kind here; the benchmark interrupts 20 times each


@pytest.fixture(scope="module")
def server(comfy_host, comfy_dir, tmp_path_factory):  # comfy_host: ComfyUI importable for prompts
    server = server_stress.start_server(comfy_dir, host_lib.prepare_base_dir(tmp_path_factory.mktemp("comfy-stress")))
    yield server
    server.stop()


def test_fifty_prompts_at_once(server):
    result = server_stress.load(server, 50)
    assert result["completed"] == 50, result["errors"]
    assert result["peak_rss_growth"] <= 0.05, result
    assert result["stray_files"] == []


def test_interrupted_tiled_upscales(server):
    result = server_stress.interrupt_upscales(server, POINTS, seed=1)
    assert result["interrupted"] == POINTS and result["partial_outputs"] == 0, result
    assert result["next_prompt_succeeded"] == result["tries"] and result["stray_files"] == [], result


def test_interrupted_trainings_resume_from_their_last_checkpoint(server):
    result = server_stress.interrupt_trainings(server, POINTS, seed=1)
    assert result["interrupted"] == result["with_checkpoint"] == result["resumed_from_checkpoint"] == POINTS, result
    assert result["lora_written_when_interrupted"] == 0 and result["next_prompt_succeeded"] == result["tries"], result
    assert result["stray_files"] == [], result
