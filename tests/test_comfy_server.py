"""The extension in a real ComfyUI 0.3.75 server (`python main.py --cpu` on 127.0.0.1; issue 2, layer 3).

The server loads the checkout through custom_nodes/onestep-sr, exactly as a user's install does, plus
testing/tiny_models.py for tiny models and conditioning; prompts travel over HTTP as the frontend sends them.
"""

import io
import json

import numpy
import pytest
from PIL import Image

from onestep_sr.testing import comfy_host as host_lib

pytestmark = pytest.mark.server

LR_SIZE = (40, 48)  # width, height of the low-resolution test image


def _input_types(server):
    return lambda class_type: server.object_info[class_type]["input"]


def _write_lr_image(server, name="lr.png"):
    pixels = (numpy.random.default_rng(0).random((LR_SIZE[1], LR_SIZE[0], 3)) * 255).astype(numpy.uint8)
    Image.fromarray(pixels).save(server.base / "input" / name)
    return name


def test_object_info_lists_every_extension_node(comfy_server, comfy_host):
    assert comfy_host.extension_nodes, "the extension registers no nodes"
    missing = sorted(set(comfy_host.extension_nodes) - set(comfy_server.object_info))
    assert not missing, f"the server does not list {missing}:\n{comfy_server.log_tail()}"
    for name, node_class in comfy_host.extension_nodes.items():
        info = comfy_server.object_info[name]
        assert info["python_module"] == f"custom_nodes.{host_lib.EXTENSION_LINK}", info["python_module"]
        assert info["category"] == node_class.CATEGORY
        assert info["output"] == list(node_class.RETURN_TYPES)
        assert info["display_name"] == comfy_host.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)
        assert info["input_order"]["required"] == list(node_class.INPUT_TYPES()["required"])


def test_workflow_templates_serve_the_shipped_workflows(comfy_server):
    shipped = host_lib.workflow_files()
    assert shipped, f"no workflows in {host_lib.WORKFLOWS}"
    templates = comfy_server.get_json("/api/workflow_templates")
    assert sorted(templates.get(host_lib.EXTENSION_LINK, [])) == sorted(path.stem for path in shipped), templates
    for path in shipped:
        served = comfy_server.get_json(f"/api/workflow_templates/{host_lib.EXTENSION_LINK}/{path.name}")
        assert served == json.loads(path.read_text()), path.name


def _upscale(server, scale_by, **changes):
    prompt, upscale_id, save_id = host_lib.build_upscale_prompt(
        host_lib.new_graph(), _input_types(server), _write_lr_image(server), scale_by)
    prompt[upscale_id]["inputs"].update(changes)
    return prompt, upscale_id, save_id


def test_upscale_prompt_returns_an_image_of_the_requested_size(comfy_server):
    prompt, _, save_id = _upscale(comfy_server, 2.0)
    entry = comfy_server.wait_history(comfy_server.queue_prompt(prompt))
    assert entry["status"]["status_str"] == "success", host_lib.failure_report(entry, comfy_server.log_tail())
    [saved] = entry["outputs"][save_id]["images"]
    image = Image.open(io.BytesIO(comfy_server.view(saved)))
    assert image.size == (2 * LR_SIZE[0], 2 * LR_SIZE[1])


def test_invalid_value_gets_a_node_error_and_the_server_keeps_working(comfy_server):
    prompt, upscale_id, save_id = _upscale(comfy_server, 1000.0)  # above scale_by's maximum
    with pytest.raises(host_lib.ServerError) as rejected:
        comfy_server.queue_prompt(prompt)
    assert rejected.value.status == 400
    node_errors = json.loads(rejected.value.body)["node_errors"]
    assert upscale_id in node_errors, node_errors
    assert any(error["extra_info"].get("input_name") == "scale_by" for error in node_errors[upscale_id]["errors"])

    good, _, good_save = _upscale(comfy_server, 2.0, seed=1)
    entry = comfy_server.wait_history(comfy_server.queue_prompt(good))
    assert entry["status"]["status_str"] == "success", host_lib.failure_report(entry)
    assert entry["outputs"][good_save]["images"]


def test_failing_node_reports_its_error_and_the_server_keeps_working(comfy_server):
    prompt, upscale_id, _ = _upscale(comfy_server, 2.0, tile_size=8)  # valid range, but below the smallest tile
    entry = comfy_server.wait_history(comfy_server.queue_prompt(prompt))
    assert entry["status"]["status_str"] == "error"
    error = host_lib.history_error(entry)
    assert error["node_id"] == upscale_id and "tile_size" in error["exception_message"], error

    good, _, good_save = _upscale(comfy_server, 2.0, seed=2)
    entry = comfy_server.wait_history(comfy_server.queue_prompt(good))
    assert entry["status"]["status_str"] == "success", host_lib.failure_report(entry)


def test_cancel_interrupts_a_tiled_upscale_and_the_server_keeps_serving(comfy_server):
    import time

    prompt, _, _ = _upscale(comfy_server, 16.0, tile_size=128)  # 640 x 768 px out: about 120 latent tiles
    prompt_id = comfy_server.queue_prompt(prompt)
    deadline = time.monotonic() + 60
    while not comfy_server.get_json("/queue")["queue_running"]:
        assert time.monotonic() < deadline, comfy_server.log_tail()
        time.sleep(0.05)
    time.sleep(0.2)
    comfy_server.post_json("/interrupt", {})
    entry = comfy_server.wait_history(prompt_id)
    events = [event for event, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in events, events

    good, _, good_save = _upscale(comfy_server, 2.0, seed=3)
    entry = comfy_server.wait_history(comfy_server.queue_prompt(good))
    assert entry["status"]["status_str"] == "success", host_lib.failure_report(entry)
    assert entry["outputs"][good_save]["images"]


@pytest.mark.parametrize("name,scale,realism", [("x4", 4, 0.0), ("x8", 8, 0.0), ("realism", 4, 1.0)])
def test_shipped_default_model_workflow_upscales_through_the_server(comfy_server, name, scale, realism):
    """The shipped default-model workflows as a user queues them: the real shipped weights (and, at
    realism 1, the shipped realism adapter), found without any download, on the bundled example photo;
    the saved image is the pure pipeline's float32 upscale with the adapter merged at that strength
    (SaveImage truncates to 8 bits: within one level)."""
    import shutil

    import torch
    from onestep_sr.adapters.lora import merged_lora
    from onestep_sr.cli import DEFAULT_MODEL, REALISM_ADAPTER
    from onestep_sr.files.images import read_image
    from onestep_sr.models.flow_map_sr import load_model
    from onestep_sr.models.pipeline import upscale

    workflow = json.loads((host_lib.WORKFLOWS / f"onestep_sr_default_model_{name}.json").read_text())
    prompt = host_lib.workflow_to_prompt(workflow, _input_types(comfy_server))
    example = host_lib.REPO / "assets" / "example.png"
    assert set(host_lib.referenced_files(prompt)) == {example.name, DEFAULT_MODEL.name}
    [upscale_node] = [node for node in prompt.values() if node["class_type"] == "OneStepSR_UpscaleSimple"]
    assert upscale_node["inputs"]["realism"] == realism
    shutil.copy(example, comfy_server.base / "input" / example.name)
    entry = comfy_server.wait_history(comfy_server.queue_prompt(prompt))
    assert entry["status"]["status_str"] == "success", host_lib.failure_report(entry, comfy_server.log_tail())
    [save_id] = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    [saved] = entry["outputs"][save_id]["images"]
    result = numpy.asarray(Image.open(io.BytesIO(comfy_server.view(saved))).convert("RGB")).astype(int)

    net = load_model(str(DEFAULT_MODEL))
    with torch.no_grad():
        expected = upscale(merged_lora(net, REALISM_ADAPTER, realism) if realism else net, read_image(example), scale)
    expected = (expected[0].permute(1, 2, 0).numpy() * 255).astype(int)
    assert result.shape == expected.shape == (75 * scale, 112 * scale, 3)
    assert numpy.abs(result - expected).max() <= 1
