"""Fixtures that run the extension inside a real ComfyUI 0.3.75 host (see testing/comfy_host.py).

comfy_host   (session) ComfyUI imported in this process, the extension and testing/tiny_models.py loaded,
             tiny model files written; .run_prompt(prompt) validates and executes an API prompt.
comfy_server (session) a real `python main.py --cpu` on 127.0.0.1 sharing comfy_host's tiny model files.

Without a host these tests skip, unless $ONESTEP_SR_COMFYUI is set (scripts/run_tests.sh sets it): then a
missing host is an error, so CI cannot pass by skipping. Tests that use these fixtures get the markers
host / server / browser themselves, so `-m "not browser"` and the like select them.
"""

import os

import pytest

from onestep_sr.testing import comfy_host as host_lib

# Every connection that would leave the machine fails the run (testing/network_guard.py).
pytest_plugins = ["onestep_sr.testing.network_guard"]

MARKER_OF_FIXTURE = {"comfy_host": "host", "comfy_server": "server", "browser": "browser"}


def pytest_collection_modifyitems(items):
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); scripts/gpu_check.sh "
                                     "runs the cuda tests on one")
    for item in items:
        if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        for fixture, marker in MARKER_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def comfy_dir():
    path = host_lib.host_dir()
    if not (path / "main.py").is_file():
        message = f"no ComfyUI host at {path}; run `bash scripts/setup_host.sh` (or `bash scripts/run_tests.sh`)"
        if os.environ.get(host_lib.HOST_ENV):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def comfy_host(comfy_dir, tmp_path_factory):
    from onestep_sr.testing import tiny_models

    base = host_lib.prepare_base_dir(tmp_path_factory.mktemp("comfy-inprocess"))
    host = host_lib.InProcessHost(comfy_dir, base)
    tiny_models.write_model_files(base / "models")
    return host


@pytest.fixture(scope="session")
def comfy_server(comfy_host, tmp_path_factory):
    base = host_lib.prepare_base_dir(tmp_path_factory.mktemp("comfy-server"), models_dir=comfy_host.base / "models")
    server = host_lib.ComfyServer(comfy_host.dir, base)
    yield server
    server.stop()
