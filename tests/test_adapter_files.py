"""Broken and unusual adapter files (issue 15): FlowSR metadata of the wrong shape and broken PEFT configs
are named errors, and alpha_pattern picks the alpha peft itself picks (adapters/formats.py, pure)."""

import json

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from onestep_sr.adapters.formats import FLOWSR_METADATA_KEY, peft_alpha, peft_config_beside, read_flowsr

TENSORS = {"t0": torch.zeros(2, 4), "t1": torch.zeros(4, 2)}


@pytest.mark.parametrize("payload, problem", [
    ([1, 2], "a JSON object"),
    ({"tensor_names": ["t0", "t1"]}, "'tensor_names' must be an object"),
    ({"tensor_names": {"unet_state_dict": ["t0"]}}, "'unet_state_dict' must be an object"),
    ({"fields": [8], "tensor_names": {"unet_state_dict": {"t0": "a.lora_A.weight"}}}, "'fields' must be an object"),
    ({"tensor_names": {"unet_state_dict": {"missing": "a.lora_A.weight"}}}, "names tensor 'missing'"),
])
def test_flowsr_metadata_of_the_wrong_shape_is_named(payload, problem):
    with pytest.raises(ValueError, match=rf"{FLOWSR_METADATA_KEY}.*{problem}"):
        read_flowsr(TENSORS, {FLOWSR_METADATA_KEY: json.dumps(payload)})


def test_flowsr_metadata_that_is_not_json_is_named():
    with pytest.raises(ValueError, match=rf"{FLOWSR_METADATA_KEY}.*not JSON"):
        read_flowsr(TENSORS, {FLOWSR_METADATA_KEY: "{broken"})


@pytest.mark.parametrize("text, problem", [("{\"r\": 4,", "not valid JSON"), ("[4]", "a JSON object"),
                                           ("{\"lora_alpha\": \"big\"}", "lora_alpha"),
                                           ("{\"alpha_pattern\": [\"to_q\"]}", "alpha_pattern")])
def test_a_broken_adapter_config_is_named_with_the_fix(tmp_path, text, problem):
    (tmp_path / "adapter_config.json").write_text(text)
    with pytest.raises(ValueError, match=rf"adapter_config\.json.*{problem}.*delete it"):
        peft_alpha(peft_config_beside(tmp_path / "adapter_model.safetensors"), "to_q", 4)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Linear(4, 4)
        self.to_k = torch.nn.Linear(4, 4)
        self.to_q_extra = torch.nn.Sequential(torch.nn.Linear(4, 4))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Block()
        self.other = Block()


@pytest.mark.parametrize("alpha_pattern", [
    {"to_q|to_k": 16.0},                 # an alternation applies to whole names, not to "(^|.)to_q" or "to_k$"
    {"attn.*": 4.0, "to_q": 32.0},       # the first key that matches wins
    {"attn\\.to_q": 2.0, "to_q_extra.0": 64.0},
])
def test_alpha_pattern_gives_peft_own_scaling(alpha_pattern):
    """Expected values: the scaling peft's own LoRA layers get from the same config."""
    config = {"r": 4, "lora_alpha": 8.0, "alpha_pattern": alpha_pattern,
              "target_modules": ["to_q", "to_k", "0"]}
    net = inject_adapter_in_model(LoraConfig(**config), Net())
    layers = {name: module for name, module in net.named_modules() if hasattr(module, "scaling")}
    assert len(layers) == 6
    for name, layer in layers.items():
        assert peft_alpha(config, name, 4) / 4 == pytest.approx(layer.scaling["default"]), name


def test_an_alpha_pattern_that_is_no_regex_is_named():
    with pytest.raises(ValueError, match=r"alpha_pattern key 'to_q\[' is not a regular expression"):
        peft_alpha({"lora_alpha": 8, "alpha_pattern": {"to_q[": 2}}, "attn.to_q", 4)
