"""The extension inside a real ComfyUI 0.3.75 imported into this process (issue 2, layer 2).

First the test fixtures prove themselves (tiny models sample through stock nodes and load through stock
loaders), then the extension: it loads, its node schemas are well formed, and every shipped workflow
converts to an API prompt that ComfyUI's own validator accepts.
"""

import json
import math

import pytest
import torch

from onestep_sr.testing import comfy_host as host_lib
from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host

SIZE = 64  # pixels; latents are SIZE / 8

# family -> (how a prompt gets the model, what ComfyUI makes of the real family: model type, the
# comfy.model_sampling schedule and prediction classes, the first sigma of a 1-step "simple" schedule)
MODEL_SOURCES = {
    "flux": ("TinyModel", {"type": "FLUX", "classes": ("ModelSamplingFlux", "CONST"), "sigma_max": 1.0}),
    "sd3": ("UNETLoader", {"type": "FLOW", "classes": ("ModelSamplingDiscreteFlow", "CONST"), "sigma_max": 1.0}),
    "sd2": ("UNETLoader", {"type": "EPS", "classes": ("ModelSamplingDiscrete", "EPS"), "sigma_max": 14.6146}),
    "sd2_v": ("TinyModel", {"type": "V_PREDICTION", "classes": ("ModelSamplingDiscrete", "V_PREDICTION"),
                            "sigma_max": 14.6146}),
}


def stock_sampling_prompt(host, family, seed=0):
    """One euler step through SamplerCustomAdvanced + CFGGuider, decoded by the tiny VAE."""
    graph = host_lib.new_graph()
    loader, _ = MODEL_SOURCES[family]
    if loader == "UNETLoader":
        model = graph.node("UNETLoader", unet_name=tiny_models.MODEL_FILES[family], weight_dtype="default")
    else:
        model = graph.node("TinyModel", family=family)
    channels = tiny_models.FAMILIES[family]["latent_channels"]
    vae = graph.node("VAELoader", vae_name=tiny_models.VAE_FILES[channels])
    positive = graph.node("TinyConditioning", family=family, seed=1)
    negative = graph.node("TinyConditioning", family=family, seed=2)
    empty = graph.node("EmptySD3LatentImage" if channels == 16 else "EmptyLatentImage",
                       width=SIZE, height=SIZE, batch_size=1)
    guider = graph.node("CFGGuider", model=model.out(0), positive=positive.out(0), negative=negative.out(0), cfg=2.0)
    sigmas = graph.node("BasicScheduler", model=model.out(0), scheduler="simple", steps=1, denoise=1.0)
    sampled = graph.node("SamplerCustomAdvanced", noise=graph.node("RandomNoise", noise_seed=seed).out(0),
                         guider=guider.out(0), sampler=graph.node("KSamplerSelect", sampler_name="euler").out(0),
                         sigmas=sigmas.out(0), latent_image=empty.out(0))
    image = graph.node("VAEDecode", samples=sampled.out(0), vae=vae.out(0))
    preview = graph.node("PreviewImage", images=image.out(0))
    return graph.finalize(), {"model": model.id, "sigmas": sigmas.id, "sampled": sampled.id, "image": image.id,
                              "preview": preview.id}


@pytest.mark.parametrize("family", list(MODEL_SOURCES))
def test_tiny_model_samples_through_stock_nodes(comfy_host, family):
    prompt, ids = stock_sampling_prompt(comfy_host, family)
    run = comfy_host.run_prompt(prompt).check()
    _, expected = MODEL_SOURCES[family]

    import comfy.model_sampling

    model = run.output(ids["model"])
    assert model.model.model_type.name == expected["type"]
    for name in expected["classes"]:
        assert isinstance(model.model.model_sampling, getattr(comfy.model_sampling, name)), name
    sigmas = run.output(ids["sigmas"])
    assert sigmas[-1] == 0 and math.isclose(float(sigmas[0]), expected["sigma_max"], rel_tol=1e-4)

    channels = tiny_models.FAMILIES[family]["latent_channels"]
    latent = run.output(ids["sampled"])["samples"]
    assert latent.shape == (1, channels, SIZE // 8, SIZE // 8) and torch.isfinite(latent).all()
    image = run.output(ids["image"])
    assert image.shape == (1, SIZE, SIZE, 3) and 0 <= image.min() and image.max() <= 1
    assert run.ui[ids["preview"]]["images"], "PreviewImage wrote no image"



def test_stock_sampling_is_seeded(comfy_host):
    prompt, ids = stock_sampling_prompt(comfy_host, "sd3")
    first, again = (comfy_host.run_prompt(prompt).check().output(ids["sampled"])["samples"] for _ in range(2))
    other_seed = comfy_host.run_prompt(stock_sampling_prompt(comfy_host, "sd3", seed=1)[0]).check()
    assert torch.equal(first, again), "same prompt, same seed, different result"
    assert not torch.allclose(first, other_seed.output(ids["sampled"])["samples"]), "the seed changed nothing"


@pytest.mark.parametrize("family", list(tiny_models.MODEL_FILES))
def test_tiny_model_files_load_like_checkpoints(comfy_host, family):
    """UNETLoader's model detection reads the tiny file back as the same family with the same weights."""
    import comfy.supported_models
    import nodes

    loaded = nodes.UNETLoader().load_unet(tiny_models.MODEL_FILES[family], "default")[0]
    built = tiny_models.build_model(family)
    expected_config = {"sd3": comfy.supported_models.SD3, "sd2": comfy.supported_models.SD20}[family]
    assert type(loaded.model.model_config) is expected_config
    assert type(loaded.model) is type(built.model)
    loaded_weights, built_weights = loaded.model.diffusion_model.state_dict(), built.model.diffusion_model.state_dict()
    assert loaded_weights.keys() == built_weights.keys()
    assert all(torch.equal(loaded_weights[k], built_weights[k]) for k in built_weights)


@pytest.mark.parametrize("channels", sorted(tiny_models.VAE_FILES))
def test_tiny_vae_encodes_and_decodes_plain_and_tiled(comfy_host, channels):
    import nodes

    vae = nodes.VAELoader().load_vae(tiny_models.VAE_FILES[channels])[0]
    assert vae.latent_channels == channels and vae.downscale_ratio == 8
    image = torch.rand(1, SIZE, SIZE, 3)
    with torch.inference_mode():  # as inside ComfyUI's executor
        latent = vae.encode(image)
        tiled = vae.encode_tiled(image, tile_x=SIZE, tile_y=SIZE, overlap=8)  # 2 of 3 passes split
        decoded = vae.decode(latent)
        decoded_tiled = vae.decode_tiled(latent, tile_x=8, tile_y=8, overlap=2)
    assert latent.shape == tiled.shape == (1, channels, SIZE // 8, SIZE // 8)
    assert decoded.shape == decoded_tiled.shape == (1, SIZE, SIZE, 3)
    assert torch.isfinite(tiled).all() and 0 <= decoded_tiled.min() and decoded_tiled.max() <= 1


def test_conditioning_matches_each_family(comfy_host):
    for family, dims in tiny_models.FAMILIES.items():
        [[context, extras]] = tiny_models.conditioning(family, seed=3)
        assert context.shape == (1, tiny_models.CONTEXT_TOKENS, dims["context_dim"])
        assert ("pooled_output" in extras) == (dims["pooled_dim"] is not None)
    assert not torch.equal(tiny_models.conditioning("sd3", 1)[0][0], tiny_models.conditioning("sd3", 2)[0][0])


def test_bad_prompt_reports_the_node_and_input(comfy_host):
    prompt, ids = stock_sampling_prompt(comfy_host, "sd3")
    prompt[ids["sigmas"]]["inputs"]["steps"] = 0  # below BasicScheduler's min of 1
    run = comfy_host.run_prompt(prompt)
    assert not run.valid and ids["sigmas"] in run.node_errors
    assert "steps" in run.failure() and run.executor is None


# ---------------------------------------------------------------- the UI -> API converter itself


def test_workflow_converter_on_a_known_workflow(comfy_host):
    """Widgets in INPUT_TYPES order, seed control values skipped, Note dropped, Reroute followed, a
    PrimitiveNode's value inlined, the upload button's value skipped, muted nodes dropped."""
    workflow = {
        "nodes": [
            {"id": 1, "type": "UNETLoader", "mode": 0, "inputs": [], "widgets_values": ["m.safetensors", "default"]},
            {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}]},
            {"id": 3, "type": "BasicScheduler", "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 2},
                        {"name": "steps", "type": "INT", "link": 3, "widget": {"name": "steps"}}],
             "widgets_values": ["karras", 4, 0.5]},
            {"id": 4, "type": "PrimitiveNode", "mode": 0, "inputs": [], "widgets_values": [7, "fixed"]},
            {"id": 5, "type": "RandomNoise", "mode": 0, "inputs": [], "widgets_values": [42, "randomize"]},
            {"id": 6, "type": "Note", "mode": 0, "inputs": [], "widgets_values": ["read me"]},
            {"id": 7, "type": "LoadImage", "mode": 0, "inputs": [], "widgets_values": ["lr.png", "image"]},
            {"id": 8, "type": "PreviewImage", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": 4}],
             "widgets_values": []},
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 4, 0, 3, 1, "INT"],
                  [4, 7, 0, 8, 0, "IMAGE"]],
    }
    assert host_lib.workflow_to_prompt(workflow, comfy_host.input_types) == {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "m.safetensors", "weight_dtype": "default"}},
        "3": {"class_type": "BasicScheduler",
              "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 7, "denoise": 0.5}},
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "lr.png"}},
    }
    workflow["nodes"][2]["widgets_values"].append(1.0)
    with pytest.raises(ValueError, match="BasicScheduler"):
        host_lib.workflow_to_prompt(workflow, comfy_host.input_types)


# ---------------------------------------------------------------- the extension


def test_extension_loads_and_registers_prefixed_nodes(comfy_host):
    assert comfy_host.extension_loaded, "ComfyUI could not import the extension (see the log above)"
    declared = comfy_host.extension_module.NODE_CLASS_MAPPINGS
    assert declared, "the extension registers no nodes"
    assert set(declared) == set(comfy_host.extension_nodes), (
        "node ids that collide with ComfyUI's own nodes: "
        f"{sorted(set(declared) - set(comfy_host.extension_nodes))}")
    assert all(name.startswith(host_lib.NODE_PREFIX) for name in declared), sorted(declared)


def _known_types(comfy_host):
    """Every socket type some node in this host (stock or extension) can output."""
    types = set()
    for node_class in comfy_host.nodes.NODE_CLASS_MAPPINGS.values():
        types.update(t for t in node_class.RETURN_TYPES if isinstance(t, str))
    return types


def _schema_problems(name, node_class, known_types, display_names):
    problems = []
    say = lambda message: problems.append(f"{name}: {message}")  # noqa: E731
    if name not in display_names:
        say("no display name in NODE_DISPLAY_NAME_MAPPINGS")
    if not str(getattr(node_class, "CATEGORY", "")).startswith(host_lib.CATEGORY_ROOT):
        say(f"CATEGORY {getattr(node_class, 'CATEGORY', None)!r} does not start with {host_lib.CATEGORY_ROOT!r}")
    function = getattr(node_class, "FUNCTION", None)
    if not function or not callable(getattr(node_class, function, None)):
        say(f"FUNCTION {function!r} is not a method of the node")
    outputs = getattr(node_class, "RETURN_TYPES", None)
    if not isinstance(outputs, (tuple, list)):
        say("RETURN_TYPES missing")
        outputs = ()
    for attribute in ("RETURN_NAMES", "OUTPUT_TOOLTIPS", "OUTPUT_IS_LIST"):
        value = getattr(node_class, attribute, None)
        if value is not None and len(value) != len(outputs):
            say(f"{attribute} has {len(value)} entries for {len(outputs)} outputs")
    if getattr(node_class, "RETURN_NAMES", None) is None and outputs:
        say("RETURN_NAMES missing")
    inputs = node_class.INPUT_TYPES()
    if not isinstance(inputs, dict) or "required" not in inputs or set(inputs) - {"required", "optional", "hidden"}:
        return problems + [f"{name}: INPUT_TYPES must return a dict with 'required' (+ 'optional', 'hidden')"]
    for section in ("required", "optional"):
        for input_name, spec in (inputs.get(section) or {}).items():
            where = f"input {input_name!r}"
            if not isinstance(spec, (tuple, list)) or not 1 <= len(spec) <= 2:
                say(f"{where}: spec must be (type,) or (type, options)")
                continue
            kind, options = spec[0], (spec[1] if len(spec) == 2 else {})
            if not isinstance(options.get("tooltip"), str) or not options["tooltip"].strip():
                say(f"{where}: no tooltip")
            if isinstance(kind, (list, tuple)):  # empty is fine: a loader whose folder holds no files
                if "default" in options and options["default"] not in kind:
                    say(f"{where}: default {options['default']!r} not among the choices")
            elif kind in ("INT", "FLOAT"):
                low, high = options.get("min"), options.get("max")
                if "default" not in options or low is None or high is None:
                    say(f"{where}: needs default, min and max")
                elif not low <= options["default"] <= high:
                    say(f"{where}: default {options['default']} outside [{low}, {high}]")
            elif kind in ("STRING", "BOOLEAN"):
                if "default" not in options:
                    say(f"{where}: needs a default")
            elif kind not in known_types:
                say(f"{where}: type {kind!r} is output by no node, so nothing can connect to it")
    return problems


def test_every_node_schema_is_well_formed(comfy_host):
    assert comfy_host.extension_nodes, "the extension registers no nodes"
    known_types = _known_types(comfy_host)
    problems = []
    for name, node_class in sorted(comfy_host.extension_nodes.items()):
        problems += _schema_problems(name, node_class, known_types, comfy_host.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    assert not problems, "\n".join(problems)


def test_schema_check_catches_a_bad_node(comfy_host):
    class BadNode:
        CATEGORY = "elsewhere"
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "missing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"strength": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 1.0}),
                                 "adapter": ("NO_SUCH_TYPE", {"tooltip": "x"})}}

    problems = "\n".join(_schema_problems("BadNode", BadNode, _known_types(comfy_host), {}))
    for expected in ("display name", "CATEGORY", "FUNCTION", "RETURN_NAMES", "no tooltip",
                     "outside [0.0, 1.0]", "NO_SUCH_TYPE"):
        assert expected in problems, f"schema check missed {expected!r}:\n{problems}"


def test_workflows_folder_ships_workflows():
    assert host_lib.workflow_files(), f"no workflows in {host_lib.WORKFLOWS}"


@pytest.mark.parametrize("path", host_lib.workflow_files(), ids=lambda p: p.name)
def test_workflow_validates_as_api_prompt(comfy_host, path):
    """Every shipped workflow converts to an API prompt that execution.validate_prompt accepts.

    The tests have no real weights, so each model file or input image the workflow names is stood in for
    by an empty placeholder file (a blank image) while validating: the check covers node types, links and
    their types, widget values and their ranges, not the contents of the weights.
    """
    workflow = json.loads(path.read_text())
    prompt = host_lib.workflow_to_prompt(workflow, comfy_host.input_types)
    types = {node["class_type"] for node in prompt.values()}
    assert types & set(comfy_host.extension_nodes), f"{path.name} uses none of the extension's nodes"
    with comfy_host.placeholder_files(host_lib.referenced_files(prompt)):
        valid, error, _, node_errors = comfy_host.validate(prompt)
    assert valid and not node_errors, f"{path.name}: {error}\n{json.dumps(node_errors, indent=1)}"


def test_the_readme_lists_every_node(comfy_host):
    import re

    readme = (host_lib.REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| \*\*(.+?)\*\* \|", readme, flags=re.MULTILINE))
    names = comfy_host.nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert listed == {names[node] for node in comfy_host.extension_nodes if node in names}


@pytest.mark.parametrize("path", host_lib.workflow_files(), ids=lambda p: p.name)
def test_no_workflow_loads_an_adapter_with_the_stock_loader_after_the_dual_branch_patch(comfy_host, path):
    """Train SR LoRA on a patched MODEL writes a dual-branch LoRA, of which stock LoraLoaderModelOnly applies
    nothing (silently): a workflow must load adapters after the patch with Load SR Adapter."""
    prompt = host_lib.workflow_to_prompt(json.loads(path.read_text()), comfy_host.input_types)
    patched = {key for key, node in prompt.items() if node["class_type"] == "OneStepSR_DualBranchPatch"}
    grew = True
    while grew:  # every node downstream of the patch through MODEL links
        downstream = {key for key, node in prompt.items() if key not in patched and any(
            isinstance(value, list) and len(value) == 2 and str(value[0]) in patched
            for value in node["inputs"].values())}
        grew = bool(downstream)
        patched |= downstream
    stock = sorted(key for key in patched if prompt[key]["class_type"] in ("LoraLoaderModelOnly", "LoraLoader"))
    assert not stock, f"{path.name}: stock LoRA loader(s) {stock} after OneStep SR Dual-Branch Patch"
