"""Run the extension inside a real ComfyUI host: in this process, or as a server subprocess.

The host is the ComfyUI 0.3.75 tree that scripts/setup_host.sh unpacks; scripts/run_tests.sh exports its
path as ONESTEP_SR_COMFYUI. Every host gets its own --base-directory (models, input, output, temp, user,
custom_nodes), whose custom_nodes/onestep-sr links to the checkout under test, so tests never read or write
the shared host tree.
"""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..files.cache import cache_root

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
ARTIFACTS = REPO / "test-artifacts"
WORKFLOWS = REPO / "workflows"
EXTENSION_LINK = "onestep-sr"  # the folder name under custom_nodes/, as scripts/setup_host.sh links it
TEST_NODE_FILES = ("tiny_models.py", "probe_nodes.py")  # custom-node files of testing/ the test hosts load
NODE_PREFIX = "OneStepSR_"
CATEGORY_ROOT = "OneStep SR"
HOST_ENV = "ONESTEP_SR_COMFYUI"
# "cuda": the in-process host runs ComfyUI on its GPU (scripts/gpu_check.sh); otherwise it is told --cpu
HOST_DEVICE_ENV = "ONESTEP_SR_HOST_DEVICE"
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# types the frontend draws as widgets; every other input type is a socket
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def host_dir():
    """The ComfyUI host directory: $ONESTEP_SR_COMFYUI, else where scripts/setup_host.sh puts it."""
    if os.environ.get(HOST_ENV):
        return Path(os.environ[HOST_ENV])
    return cache_root() / "comfyui-0.3.75"


def prepare_base_dir(base, models_dir=None, test_nodes=True):
    """Lay out a ComfyUI --base-directory that loads this checkout and (test_nodes) the test nodes (TEST_NODE_FILES).

    models_dir, when given, is linked as base/models so that several hosts share one set of tiny files.
    """
    base = Path(base)
    for sub in ("input", "output", "temp", "user", "custom_nodes"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if models_dir is not None:
        (base / "models").symlink_to(Path(models_dir).resolve(), target_is_directory=True)
    else:
        (base / "models").mkdir(exist_ok=True)
    (base / "custom_nodes" / EXTENSION_LINK).symlink_to(REPO, target_is_directory=True)
    for name in TEST_NODE_FILES if test_nodes else ():
        (base / "custom_nodes" / name).symlink_to(HERE / name)
    return base


def workflow_files():
    return sorted(WORKFLOWS.glob("*.json"))


# ---------------------------------------------------------------- in-process host


class _RecordingServer:
    """What PromptExecutor and nodes need from server.PromptServer, recording the messages it is sent."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        self.events.append(("progress_text", {"text": text, "node": node_id}))


@dataclass
class PromptRun:
    """The outcome of one API-format prompt: validation, then (if valid) execution."""

    prompt: dict
    valid: bool
    error: dict | None
    node_errors: dict
    success: bool = False
    messages: list = field(default_factory=list)
    ui: dict = field(default_factory=dict)  # what /history would list per output node
    executor: object = None

    def output(self, node_id, index=0):
        """The value node `node_id` returned at output `index` (first item of list outputs)."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output (did it run?)")
        return entry.outputs[index][0]

    def failure(self):
        """A readable reason this prompt did not succeed, or None."""
        if not self.valid:
            lines = [f"{self.error['message']}: {self.error['details']}"]
            for node_id, info in self.node_errors.items():
                for reason in info["errors"]:
                    lines.append(f"  node {node_id} ({info['class_type']}): {reason['message']}: {reason['details']}")
            return "\n".join(lines)
        for event, data in self.messages:
            if event == "execution_error":
                return (f"node {data['node_id']} ({data['node_type']}) raised {data['exception_type']}: "
                        f"{data['exception_message']}\n" + "".join(data["traceback"]))
        return None if self.success else "execution did not succeed"

    def check(self):
        reason = self.failure()
        assert reason is None, f"prompt failed:\n{reason}"
        return self


class InProcessHost:
    """ComfyUI imported into this process with the extension loaded (ComfyUI first on sys.path, its
    utils.extra_config before its nodes, then the extension as a custom node)."""

    def __init__(self, comfy_dir, base):
        self.dir = Path(comfy_dir)
        self.base = Path(base)
        if str(self.dir) not in sys.path[:1]:
            sys.path.insert(0, str(self.dir))
        import comfy.options

        comfy.options.enable_args_parsing(False)  # keep pytest's argv away from ComfyUI's parser
        import comfy.cli_args

        comfy.cli_args.args.cpu = os.environ.get(HOST_DEVICE_ENV) != "cuda"
        comfy.cli_args.args.base_directory = str(self.base)  # read once, when folder_paths is imported
        import utils.extra_config  # noqa: F401  (ComfyUI imports it before nodes; nodes relies on that order)
        import nodes

        if Path(nodes.__file__).resolve().parent != self.dir.resolve():
            raise RuntimeError(f"`nodes` resolved to {nodes.__file__}, not ComfyUI's nodes.py in {self.dir}")
        import execution
        import folder_paths
        import server

        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        if getattr(server.PromptServer, "instance", None) is None:
            server.PromptServer.instance = _RecordingServer()
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        self.stock_node_types = set(nodes.NODE_CLASS_MAPPINGS)
        self.extension_path = self.base / "custom_nodes" / EXTENSION_LINK
        self.extension_loaded = asyncio.run(
            nodes.load_custom_node(str(self.extension_path), module_parent="custom_nodes"))
        # load_custom_node names a folder's module after its path
        self.extension_module = sys.modules.get(str(self.extension_path).replace(".", "_x_"))
        self.extension_nodes = {name: cls for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
                                if name not in self.stock_node_types}
        for name in TEST_NODE_FILES:
            test_nodes = self.base / "custom_nodes" / name
            if not asyncio.run(nodes.load_custom_node(str(test_nodes), module_parent="custom_nodes")):
                raise RuntimeError(f"ComfyUI could not load the test nodes in {test_nodes}")

    def module(self, name):
        """The extension's module `name` (e.g. "bridge.upscale") as ComfyUI loaded it."""
        import importlib

        return importlib.import_module(f"{self.extension_module.__name__}.{name}")

    @staticmethod
    def graph():
        """new_graph(), at hand on the fixture."""
        return new_graph()

    def validate(self, prompt):
        """execution.validate_prompt: (valid, error, output node ids, node_errors)."""
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run_prompt(self, prompt):
        """Validate and execute an API-format prompt with a fresh executor (no cache from earlier runs)."""
        valid, error, outputs, node_errors = self.validate(prompt)
        run = PromptRun(prompt=prompt, valid=valid, error=error, node_errors=node_errors)
        if not valid:
            return run
        executor = self.execution.PromptExecutor(
            _RecordingServer(), cache_type=self.execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
        executor.execute(prompt, str(uuid.uuid4()), {}, outputs)
        run.success, run.messages, run.executor = executor.success, executor.status_messages, executor
        run.ui = executor.history_result["outputs"]
        return run

    def input_types(self, class_type):
        node_class = self.nodes.NODE_CLASS_MAPPINGS.get(class_type)
        if node_class is None:
            raise KeyError(f"node type {class_type!r} is not registered in ComfyUI")
        return node_class.INPUT_TYPES()

    @contextlib.contextmanager
    def placeholder_files(self, names):
        """Empty model files and blank images under these names, for validating workflows whose weights
        the tests do not have; each model name appears in every model folder of this host's base dir."""
        import numpy
        from PIL import Image

        created = []
        models = self.base / "models"
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = Path(self.folder_paths.get_input_directory()) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(numpy.zeros((64, 64, 3), numpy.uint8)).save(path)
                created.append(path)
                continue
            for folder_name, (paths, _) in self.folder_paths.folder_names_and_paths.items():
                if folder_name in ("custom_nodes", "configs"):
                    continue
                for folder in paths:
                    if Path(folder).parent == models or Path(folder).parent.resolve() == models.resolve():
                        path = Path(folder) / name
                        if not path.exists():
                            path.parent.mkdir(parents=True, exist_ok=True)
                            path.touch()
                            created.append(path)
        self.folder_paths.filename_list_cache.clear()
        try:
            yield
        finally:
            for path in created:
                path.unlink(missing_ok=True)
            self.folder_paths.filename_list_cache.clear()


# ---------------------------------------------------------------- prompts


def new_graph():
    """ComfyUI's GraphBuilder with plain ids "1", "2", ...: node(class_type, **inputs) returns a node whose
    .out(i) links its output i; finalize() gives the API prompt. Needs a host fixture (ComfyUI importable)."""
    from comfy_execution.graph_utils import GraphBuilder

    return GraphBuilder(prefix="")


def widget_defaults(input_types):
    """The default of every required widget input (a combo without one: its first choice)."""
    out = {}
    for name, spec in input_types.get("required", {}).items():
        kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, (list, tuple)):
            out[name] = options.get("default", kind[0] if kind else None)
        elif kind in WIDGET_TYPES and "default" in options:
            out[name] = options["default"]
    return out


def build_upscale_prompt(graph, input_types, image_name, scale_by, family="sd3", seed=0, prefix="onestep-sr-test"):
    """The one-click upscale on a tiny model: LoadImage(image_name) -> OneStepSR_Upscale -> SaveImage.

    input_types(class_type) gives INPUT_TYPES (in process) or object_info[...]["input"] (server); inputs
    not named here keep the node's defaults. Returns (prompt, id of the upscale node, id of SaveImage).
    """
    from . import tiny_models

    model = graph.node("UNETLoader", unet_name=tiny_models.MODEL_FILES[family], weight_dtype="default")
    vae = graph.node("VAELoader", vae_name=tiny_models.VAE_FILES[tiny_models.FAMILIES[family]["latent_channels"]])
    image = graph.node("LoadImage", image=image_name)
    positive = graph.node("TinyConditioning", family=family, seed=1)
    upscale = graph.node("OneStepSR_Upscale", **{
        **widget_defaults(input_types("OneStepSR_Upscale")), "model": model.out(0), "vae": vae.out(0),
        "image": image.out(0), "positive": positive.out(0), "scale_by": scale_by, "steps": 1, "seed": seed})
    save = graph.node("SaveImage", images=upscale.out(0), filename_prefix=prefix)
    return graph.finalize(), upscale.id, save.id


# ---------------------------------------------------------------- UI workflow -> API prompt


def _widget_inputs(input_types):
    """(name, extra values the frontend stores after it) for each widget input, in widgets_values order."""
    out = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            is_combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
            if not (is_combo or kind in WIDGET_TYPES) or options.get("forceInput"):
                continue
            extra = 0
            if kind == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
                extra = 1  # the "control after generate" widget (fixed / increment / randomize)
            elif is_combo and options.get("control_after_generate"):
                raise NotImplementedError(f"input {name!r}: combo with control_after_generate is not converted")
            elif is_combo and any(options.get(k) for k in ("image_upload", "video_upload", "audio_upload")):
                extra = 1  # the upload button's value
            out.append((name, extra))
    return out


def workflow_to_prompt(workflow, input_types):
    """Convert a UI-format (litegraph) workflow into an API prompt, as the frontend's graphToPrompt does.

    input_types(class_type) returns that node's INPUT_TYPES(). Handles Note/MarkdownNote (dropped),
    Reroute (followed), PrimitiveNode (its value becomes the target's literal), muted nodes (dropped).
    Bypassed nodes and subgraphs raise NotImplementedError rather than being guessed at.
    """
    by_id = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}
    subgraphs = {sg["id"] for sg in (workflow.get("definitions") or {}).get("subgraphs", [])}

    def source(link_id):
        """(node, output slot) feeding link_id, through Reroutes."""
        _, from_id, from_slot, *_ = links[link_id]
        node = by_id[from_id]
        while node["type"] == "Reroute":
            upstream = node["inputs"][0].get("link")
            if upstream is None:
                return None, None
            _, from_id, from_slot, *_ = links[upstream]
            node = by_id[from_id]
        return node, from_slot

    prompt = {}
    for node in workflow["nodes"]:
        kind, mode = node["type"], node.get("mode", 0)
        if kind in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode") or mode == 2:
            continue
        if kind in subgraphs:
            raise NotImplementedError(f"node {node['id']} is a subgraph; the test converter does not expand them")
        if mode == 4:
            raise NotImplementedError(f"node {node['id']} ({kind}) is bypassed; the test converter does not bypass")
        inputs = {}
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            inputs.update(values)
        else:
            position = 0
            for name, extra in _widget_inputs(input_types(kind)):
                if position >= len(values):
                    raise ValueError(f"node {node['id']} ({kind}) has {len(values)} widget values; "
                                     f"input {name!r} has none")
                inputs[name] = values[position]
                position += 1 + extra
            if position != len(values):
                raise ValueError(f"node {node['id']} ({kind}) has {len(values)} widget values, "
                                 f"its widget inputs take {position}")
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            upstream, from_slot = source(slot["link"])
            if upstream is None or upstream.get("mode", 0) == 2:
                continue
            if upstream["type"] == "PrimitiveNode":
                inputs[slot["name"]] = upstream["widgets_values"][0]
            else:
                inputs[slot["name"]] = [str(upstream["id"]), from_slot]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt


def referenced_files(prompt):
    """String inputs of a prompt that name model files or images."""
    return sorted({value for node in prompt.values() for value in node["inputs"].values()
                   if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS + IMAGE_EXTENSIONS)})


# ---------------------------------------------------------------- server subprocess


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def history_error(entry):
    """The execution_error message of a /history entry, or None."""
    for event, data in entry["status"]["messages"]:
        if event == "execution_error":
            return data
    return None


def failure_report(entry, log_tail: str = "") -> str:
    """What went wrong in a /history entry, readable in an assertion message: the failing node, the exception
    and its traceback (pytest cuts a dict short before them), else the server log's tail."""
    error = history_error(entry)
    if error is None:
        return log_tail
    return (f"node {error.get('node_id')} ({error.get('node_type')}): {error.get('exception_type')}: "
            f"{error.get('exception_message')}\n" + "".join(error.get("traceback") or []))


class ServerError(AssertionError):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class ComfyServer:
    """`python main.py --cpu ...` on 127.0.0.1 with an isolated base directory; stop() always kills it.
    `python` runs it (default: this interpreter); `env` updates its environment."""

    def __init__(self, comfy_dir, base, ready_timeout=90.0, python=sys.executable, env=None):
        self.dir, self.base = Path(comfy_dir), Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        command = [
            str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base),
            "--output-directory", str(self.base / "output"), "--input-directory", str(self.base / "input"),
            "--temp-directory", str(self.base / "temp"), "--user-directory", str(self.base / "user"),
            "--database-url", "sqlite:///:memory:",
        ]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=self.dir, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.object_info = self.get_json("/object_info")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer /object_info within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars=6000):
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def request(self, path, data=None, method=None):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            raise ServerError(error.code, error.read().decode(errors="replace")) from None

    def get_json(self, path):
        return json.loads(self.request(path)[1])

    def post_json(self, path, data):
        return json.loads(self.request(path, data, "POST")[1] or b"null")

    def queue_prompt(self, prompt):
        """POST /prompt; returns the prompt id, or raises ServerError (e.g. 400 with node_errors)."""
        return self.post_json("/prompt", {"prompt": prompt, "client_id": "onestep-sr-tests"})["prompt_id"]

    def wait_history(self, prompt_id, timeout=120.0):
        """The /history entry of prompt_id once it has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:  # the queue writes history only once the prompt has finished
                return history[prompt_id]
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt, timeout=120.0):
        """Queue `prompt` and wait for its /history entry."""
        return self.wait_history(self.queue_prompt(prompt), timeout)

    def view(self, image):
        """Bytes of an image listed in /history outputs ({"filename", "subfolder", "type"})."""
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        return self.request(f"/view?{query}")[1]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
