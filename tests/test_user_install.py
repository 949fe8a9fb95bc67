"""The install users take (issue 15): ComfyUI's Python plus `pip install -r requirements.txt` and nothing else
(scripts/setup_user_venv.sh builds it; the test venv's dev extras would hide a missing requirement), the
extension linked into custom_nodes, a real server: it loads every node, runs the shipped default-model
workflow and a 2-step Train SR LoRA."""

import io
import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from onestep_sr.files.cache import cache_root
from onestep_sr.testing import comfy_host as host_lib
from onestep_sr.testing.user_install import STAMP, stamp

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def user_python():
    venv = cache_root() / "user-venv"
    expected = stamp(cache_root() / "comfy-requirements.txt", host_lib.REPO / "requirements.txt")
    if not (venv / STAMP).is_file() or (venv / STAMP).read_text().strip() != expected:
        message = f"no user venv for this requirements.txt at {venv}; run `bash scripts/setup_user_venv.sh`"
        if os.environ.get(host_lib.HOST_ENV):
            pytest.fail(message)
        pytest.skip(message)
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def user_server(user_python, comfy_dir, tmp_path_factory):
    base = host_lib.prepare_base_dir(tmp_path_factory.mktemp("comfy-user"), test_nodes=False)
    server = host_lib.ComfyServer(comfy_dir, base, python=user_python)
    yield server
    server.stop()


def test_the_venv_is_the_users_path(user_python):
    """No editable install, no extras: the extension reaches this Python only through custom_nodes."""
    code = ("import importlib.util as u; print([m for m in ('onestep_sr', 'pytest', 'hypothesis', 'skimage', "
            "'playwright') if u.find_spec(m)])")
    found = subprocess.run([str(user_python), "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"


def test_the_server_loads_every_node(user_server, comfy_host):
    missing = sorted(set(comfy_host.extension_nodes) - set(user_server.object_info))
    assert not missing, f"not loaded with requirements.txt alone: {missing}\n{user_server.log_tail()}"
    log = user_server.log_tail(100_000)
    extension = str(user_server.base / "custom_nodes" / host_lib.EXTENSION_LINK)
    assert f"seconds: {extension}\n" in log and f"(IMPORT FAILED): {extension}" not in log, log


def test_the_default_model_workflow_runs(user_server):
    workflow = json.loads((host_lib.WORKFLOWS / "onestep_sr_default_model_x4.json").read_text())
    prompt = host_lib.workflow_to_prompt(workflow, lambda kind: user_server.object_info[kind]["input"])
    shutil.copy(host_lib.REPO / "assets" / "example.png", user_server.base / "input" / "example.png")
    entry = user_server.run(prompt)
    assert entry["status"]["status_str"] == "success", host_lib.failure_report(entry, user_server.log_tail())
    [save_id] = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    [saved] = entry["outputs"][save_id]["images"]
    assert Image.open(io.BytesIO(user_server.view(saved))).size == (112 * 4, 75 * 4)


def test_a_two_step_lora_training_runs(user_server):
    shutil.copy(host_lib.REPO / "assets" / "example.png", user_server.base / "input" / "example.png")
    graph = host_lib.new_graph()
    loader = graph.node("OneStepSR_LoadModel", model_name="onestep_sr_default.safetensors")
    image = graph.node("LoadImage", image="example.png")
    train = graph.node("OneStepSR_TrainLoRA", model=loader.out(0), vae=loader.out(1), images=image.out(0),
                       lora_name="user_path", steps=2, batch_size=1, crop_size=64, scale=4, rank=2,
                       learning_rate=1e-4, adversarial_weight=0.1, discriminator="patch", seed=0, overwrite=False)
    graph.node("PreviewImage", images=train.out(1))
    entry = user_server.run(graph.finalize(), timeout=300)
    assert entry["status"]["status_str"] == "success", host_lib.failure_report(entry, user_server.log_tail())
    assert (user_server.base / "models" / "loras" / "user_path.safetensors").is_file()
