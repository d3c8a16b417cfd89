"""Model zoo: the tiny CNNs of the on-device-training literature, as ``.tmpm`` models.

Every model is built as a float :class:`tinymp.builder.Graph` with seeded random weights
(He-normal for layers followed by ReLU6, LeCun-normal for linear ones, small random biases),
then post-training quantised on a small seeded calibration batch of uniform [-1, 1] images.
The weights are not trained: the models are for measuring cost (flash, arena, MACs, latency)
and for exercising the engine and the trainers, whose figures do not depend on weight values.

API
---
::

    mobilenetv2(width=0.35, resolution=128, num_classes=10, seed=0, last_channels=None) -> bytes
    mcunet(resolution=128, num_classes=10, seed=0, config='5fps')                      -> bytes
    proxylessnas(width=0.3, resolution=128, num_classes=10, seed=0, last_channels=None,
                 rounding='ceil')                                                   -> bytes
    mobilenetv2_graph(...), mcunet_graph(...), proxylessnas_graph(...)   -> builder.Graph (float)
    models()            -> [(name, kwargs), ...]   the zoo entries of `tinymp plan --zoo`
    demo()              -> bytes of the trained demo model host/tinymp/models/demo.tmpm
                           (written by tools/train_demo.py; FileNotFoundError when absent)
    build(name, **kw)   -> bytes
    calibration_batch(resolution, n=8, seed=0, channels=3) -> float32 [n, r, r, channels]
    quantize_graph(g, seed=0, n=8) -> bytes       PTQ of a zoo graph on its calibration batch
    make_divisible(v, divisor=8, min_value=None)
    MCUNET_CONFIGS      name -> (stem channels, [(kernel, expand, out channels, stride), ...])

Architectures (numbers transcribed, with their sources, next to each table below):

* MobileNetV2 (Sandler et al., CVPR 2018): stem 3x3/2, the (t, c, n, s) table of the paper,
  channels ``make_divisible(c * width, 8)``, final 1x1 conv to 1280 (kept at 1280 for
  width < 1, as the reference implementations do; pass ``last_channels`` to change it, e.g.
  448 as MCUNet's ``mbv2-w0.35`` baseline or 0 for none as tiny-training's copy).
* MCUNet (Lin et al., NeurIPS 2020), the published ImageNet configs of MIT HAN Lab; default
  ``'5fps'`` (= ``mcunet-in1``), the MCUNet model that tiny-training (Lin et al., NeurIPS
  2022) fine-tunes on device.
* ProxylessNAS-Mobile (Cai et al., ICLR 2019), width-scaled; ``width=0.3`` reproduces the
  ``proxyless-w0.3`` model that MCUNet uses as a baseline and tiny-training fine-tunes.

Each block is an inverted residual: 1x1 expand + ReLU6 (absent when the expand ratio is 1),
k x k depthwise (stride s, TF 'same' padding) + ReLU6, linear 1x1 projection, and a residual
``add`` when the stride is 1 and the input and output channels are equal. Then global average
pool and a fully connected classifier.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .builder import Graph

__all__ = [
    "mobilenetv2", "mobilenetv2_graph", "mcunet", "mcunet_graph", "proxylessnas",
    "proxylessnas_graph", "models", "build", "calibration_batch", "quantize_graph",
    "make_divisible", "demo", "MCUNET_CONFIGS", "MOBILENETV2_SETTINGS", "PROXYLESS_MOBILE_BLOCKS",
]


# --------------------------------------------------------------------------------------------
# Architecture tables (facts, transcribed with their sources)
# --------------------------------------------------------------------------------------------

# MobileNetV2, Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
# CVPR 2018, Table 2: (expansion t, output channels c, repeats n, first stride s).
# Stem: 3x3 conv, 32 channels, stride 2; head: 1x1 conv to 1280.
MOBILENETV2_SETTINGS: List[Tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]

# MCUNet ImageNet network configurations, transcribed from the JSON files published by MIT HAN
# Lab in github.com/mit-han-lab/tinyml, directory mcunet/assets/configs/ (commit e899b1b),
# files mcunet-{10fps,5fps,256kb-1mb,320kb-1mb,512kb-2mb}_imagenet.json — the configs that the
# mit-han-lab/mcunet model zoo (mcunet/model_zoo.py) names mcunet-in0 ... mcunet-in4.
# Per block: (depthwise kernel, expand ratio, output channels, stride). In every published
# block the expanded width ("mid_channels") equals input channels x expand ratio and the
# identity shortcut is present exactly when stride == 1 and in == out channels. None of these
# configs has a feature-mix (last 1x1) layer: the classifier reads the last block directly.
# The resolution in each file name's JSON ("resolution") is the ImageNet one; the builders take
# the resolution as an argument (tiny-training runs these models at 128x128).
MCUNET_CONFIGS: Dict[str, Tuple[int, List[Tuple[int, int, int, int]]]] = {
    # mcunet-10fps_imagenet.json (mcunet-in0), ImageNet resolution 48
    "10fps": (24, [
        (3, 1, 16, 1), (5, 4, 16, 2), (3, 3, 16, 1), (3, 4, 16, 1), (7, 5, 24, 2),
        (5, 4, 24, 1), (5, 5, 24, 1), (7, 5, 48, 2), (5, 4, 48, 1), (3, 5, 56, 1),
        (5, 4, 56, 1), (3, 5, 56, 1), (3, 6, 112, 2), (5, 4, 112, 1), (3, 6, 192, 1),
    ]),
    # mcunet-5fps_imagenet.json (mcunet-in1), ImageNet resolution 96. This is the
    # "mcunet-5fps" model of mit-han-lab/tiny-training (algorithm/README.md and
    # algorithm/assets/mcu_models/mcunet-5fps.pkl, same blocks, used at 128x128).
    "5fps": (16, [
        (3, 1, 8, 1), (3, 4, 16, 2), (3, 3, 16, 1), (7, 3, 24, 2), (3, 5, 24, 1),
        (3, 5, 40, 2), (7, 4, 40, 1), (5, 4, 48, 1), (3, 3, 48, 1), (3, 4, 48, 1),
        (7, 5, 96, 2), (5, 4, 96, 1), (5, 4, 96, 1), (3, 6, 160, 1),
    ]),
    # mcunet-256kb-1mb_imagenet.json (mcunet-in2), ImageNet resolution 160
    "256kb": (16, [
        (3, 1, 8, 1), (5, 3, 16, 2), (7, 6, 16, 1), (3, 5, 16, 1), (5, 5, 16, 1),
        (3, 5, 24, 2), (7, 6, 24, 1), (5, 6, 24, 1), (7, 4, 40, 2), (5, 5, 40, 1),
        (3, 5, 48, 1), (5, 5, 48, 1), (3, 4, 48, 1), (5, 6, 96, 2), (5, 4, 96, 1),
        (5, 3, 96, 1), (3, 4, 96, 1), (5, 5, 160, 1),
    ]),
    # mcunet-320kb-1mb_imagenet.json (mcunet-in3), ImageNet resolution 176
    "320kb": (16, [
        (3, 1, 8, 1), (7, 3, 16, 2), (3, 5, 16, 1), (7, 5, 16, 1), (5, 4, 16, 1),
        (5, 5, 24, 2), (5, 5, 24, 1), (5, 5, 24, 1), (3, 5, 40, 2), (7, 6, 40, 1),
        (5, 4, 40, 1), (5, 5, 48, 1), (7, 5, 48, 1), (3, 5, 48, 1), (3, 6, 96, 2),
        (7, 5, 96, 1), (3, 4, 96, 1), (7, 5, 160, 1),
    ]),
    # mcunet-512kb-2mb_imagenet.json (mcunet-in4), ImageNet resolution 160
    "512kb": (32, [
        (3, 1, 16, 1), (7, 3, 24, 2), (3, 5, 24, 1), (5, 4, 24, 1), (7, 5, 40, 2),
        (3, 4, 40, 1), (7, 4, 40, 1), (7, 3, 80, 2), (3, 3, 80, 1), (7, 3, 80, 1),
        (3, 4, 96, 1), (5, 3, 96, 1), (5, 3, 96, 1), (7, 4, 192, 2), (7, 3, 192, 1),
        (5, 3, 192, 1), (5, 4, 320, 1),
    ]),
}
_MCUNET_ALIASES = {"in0": "10fps", "in1": "5fps", "in2": "256kb", "in3": "320kb",
                   "in4": "512kb", "mcunet-in0": "10fps", "mcunet-in1": "5fps",
                   "mcunet-in2": "256kb", "mcunet-in3": "320kb", "mcunet-in4": "512kb",
                   "mcunet-5fps": "5fps", "mcunet-10fps": "10fps", "mcunet-256kb": "256kb",
                   "mcunet-320kb": "320kb", "mcunet-512kb": "512kb"}

# ProxylessNAS-Mobile, Cai et al., "ProxylessNAS: Direct Neural Architecture Search on Target
# Task and Hardware", ICLR 2019. Transcribed from github.com/mit-han-lab/tinyml,
# mcunet/assets/configs/proxyless_mobile.json (commit e899b1b; the same network as the
# "proxyless_mobile" config that mit-han-lab/proxylessnas proxyless_nas/model_zoo.py loads).
# Stem 3x3/2 with 32 channels, feature-mix 1x1 conv to 1280 (ReLU6). Per block:
# (kernel, expand ratio, out channels, stride); the two ZeroLayer blocks of the 32-channel
# stage (identity shortcut around a zero op = identity) are left out.
PROXYLESS_MOBILE_STEM = 32
PROXYLESS_MOBILE_LAST = 1280
PROXYLESS_MOBILE_BLOCKS: List[Tuple[int, int, int, int]] = [
    (3, 1, 16, 1),
    (5, 3, 32, 2), (3, 3, 32, 1),
    (7, 3, 40, 2), (3, 3, 40, 1), (5, 3, 40, 1), (5, 3, 40, 1),
    (7, 6, 80, 2), (5, 3, 80, 1), (5, 3, 80, 1), (5, 3, 80, 1),
    (5, 6, 96, 1), (5, 3, 96, 1), (5, 3, 96, 1), (5, 3, 96, 1),
    (7, 6, 192, 2), (7, 6, 192, 1), (7, 3, 192, 1), (7, 3, 192, 1),
    (7, 6, 320, 1),
]
# Width scaling. The published width-scaled models, proxyless-w0.3-r176_imagenet.json and
# proxyless-w0.25-r112_imagenet.json in github.com/mit-han-lab/proxylessnas (directory
# proxyless_gaze/, commit bf58b5c), have channels ceil(c * width / 8) * 8:
#   w0.3 : stem 16, blocks 8, 16, 16, 24, 32, 64, 96, feature mix 384;
#   w0.25: stem 8,  blocks 8, 8, 16, 24, 24, 48, 80, feature mix 320.
# (make_divisible(c * 0.3, 8) would give 56 instead of 64 for the 192-channel stage.)
# rounding='ceil' (default) reproduces them; rounding='make_divisible' uses make_divisible.


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Nearest multiple of ``divisor`` (at least ``min_value``), never below 90 % of ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def _ceil_div8(v: float, divisor: int = 8) -> int:
    # the small epsilon keeps exact products (e.g. 40 * 0.3 = 12.000000000000002) exact
    return max(divisor, int(math.ceil(v / divisor - 1e-9)) * divisor)


class _Init:
    """Seeded weight factory: He-normal before ReLU6, LeCun-normal for linear layers."""

    def __init__(self, rng: np.random.Generator, bias_std: float = 0.05):
        self.rng = rng
        self.bias_std = bias_std

    def _normal(self, shape, fan_in, relu):
        std = math.sqrt((2.0 if relu else 1.0) / fan_in)
        return self.rng.normal(0.0, std, size=shape).astype(np.float32)

    def bias(self, n):
        return self.rng.normal(0.0, self.bias_std, size=n).astype(np.float32)

    def conv(self, cout, k, cin, relu=True):
        return self._normal((cout, k, k, cin), k * k * cin, relu), self.bias(cout)

    def dw(self, k, c, relu=True):
        return self._normal((k, k, c), k * k, relu), self.bias(c)

    def pw(self, cout, cin, relu=True):
        return self._normal((cout, cin), cin, relu), self.bias(cout)

    def fc(self, o, n):
        return self._normal((o, n), n, False), self.bias(o)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _check_common(resolution, num_classes, seed):
    _check_seed(seed)
    if int(resolution) != resolution or resolution < 32:
        raise ValueError(f"resolution must be an integer >= 32, got {resolution!r}")
    if int(num_classes) != num_classes or not 1 <= num_classes <= 65535:
        raise ValueError(f"num_classes must be an integer in 1 ... 65535, got {num_classes!r}")


def _inverted_residual(g: Graph, x, init: _Init, cout: int, k: int, expand: float,
                       stride: int):
    cin = x.shape[2]
    h = x
    mid = int(round(cin * expand))
    if expand != 1:
        h = g.pwconv(h, *init.pw(mid, cin), act="relu6")
    h = g.dwconv(h, *init.dw(k, mid), stride=stride, padding="same", act="relu6")
    h = g.pwconv(h, *init.pw(cout, mid, relu=False), act=None)
    if stride == 1 and cin == cout:
        h = g.add(x, h)
    return h


def _head(g: Graph, x, init: _Init, last_channels: int, num_classes: int):
    if last_channels:
        x = g.pwconv(x, *init.pw(last_channels, x.shape[2]), act="relu6")
    x = g.avgpool(x)
    return g.fc(x, *init.fc(num_classes, x.shape[2]))


def _mbnet(resolution, num_classes, seed, stem, blocks, last_channels) -> Graph:
    """stem conv3x3/2 + ReLU6, inverted residual blocks (k, expand, cout, stride), head."""
    _check_common(resolution, num_classes, seed)
    init = _Init(np.random.default_rng(seed))
    g = Graph((int(resolution), int(resolution), 3))
    x = g.conv(g.input, *init.conv(stem, 3, 3), stride=2, padding="same", act="relu6")
    for k, e, c, s in blocks:
        x = _inverted_residual(g, x, init, c, k, e, s)
    _head(g, x, init, last_channels, int(num_classes))
    return g


def calibration_batch(resolution: int, n: int = 8, seed: int = 0, channels: int = 3
                      ) -> np.ndarray:
    """A seeded batch of ``n`` images uniform in [-1, 1], float32 [n, r, r, channels]."""
    _check_seed(seed)
    rng = np.random.default_rng([int(seed), 0xCA11B])
    return rng.uniform(-1.0, 1.0, size=(n, resolution, resolution, channels)).astype(np.float32)


def quantize_graph(g: Graph, seed: int = 0, n: int = 8,
                   class_names: Optional[Sequence[str]] = None) -> bytes:
    """PTQ of a zoo graph on its seeded calibration batch; input range fixed to [-1, 1]."""
    h, w, c = g.input_shape
    if h != w:
        raise ValueError("zoo graphs have square inputs")
    calib = calibration_batch(h, n=n, seed=seed, channels=c)
    return g.quantize(calib, class_names=class_names, input_range=(-1.0, 1.0))


# --------------------------------------------------------------------------------------------
# MobileNetV2
# --------------------------------------------------------------------------------------------

def mobilenetv2_blocks(width: float) -> Tuple[int, List[Tuple[int, int, int, int]]]:
    """(stem channels, [(kernel, expand, cout, stride), ...]) of MobileNetV2 at ``width``."""
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    stem = make_divisible(32 * width, 8)
    blocks = []
    for t, c, n, s in MOBILENETV2_SETTINGS:
        cout = make_divisible(c * width, 8)
        for i in range(n):
            blocks.append((3, t, cout, s if i == 0 else 1))
    return stem, blocks


def mobilenetv2_graph(width: float = 0.35, resolution: int = 128, num_classes: int = 10,
                      seed: int = 0, last_channels: Optional[int] = None) -> Graph:
    """Float MobileNetV2 graph (see module doc). ``last_channels`` defaults to 1280 for
    width <= 1 and make_divisible(1280 * width, 8) above; 0 drops the last 1x1 conv."""
    stem, blocks = mobilenetv2_blocks(width)
    if last_channels is None:
        last_channels = make_divisible(1280 * width, 8) if width > 1.0 else 1280
    return _mbnet(resolution, num_classes, seed, stem, blocks, int(last_channels))


def mobilenetv2(width: float = 0.35, resolution: int = 128, num_classes: int = 10,
                seed: int = 0, last_channels: Optional[int] = None) -> bytes:
    """MobileNetV2 as a .tmpm model (random weights, PTQ)."""
    g = mobilenetv2_graph(width, resolution, num_classes, seed, last_channels)
    return quantize_graph(g, seed)


# --------------------------------------------------------------------------------------------
# MCUNet
# --------------------------------------------------------------------------------------------

def _mcunet_config(config: str):
    key = _MCUNET_ALIASES.get(str(config).lower(), str(config).lower())
    if key not in MCUNET_CONFIGS:
        raise ValueError(f"unknown MCUNet config {config!r}; known: "
                         f"{', '.join(MCUNET_CONFIGS)} (or mcunet-in0 ... mcunet-in4)")
    return MCUNET_CONFIGS[key]


def mcunet_graph(resolution: int = 128, num_classes: int = 10, seed: int = 0,
                 config: str = "5fps") -> Graph:
    """Float MCUNet graph from a published config (default '5fps' = mcunet-in1)."""
    stem, blocks = _mcunet_config(config)
    return _mbnet(resolution, num_classes, seed, stem, blocks, 0)


def mcunet(resolution: int = 128, num_classes: int = 10, seed: int = 0,
           config: str = "5fps") -> bytes:
    """MCUNet as a .tmpm model (random weights, PTQ)."""
    return quantize_graph(mcunet_graph(resolution, num_classes, seed, config), seed)


# --------------------------------------------------------------------------------------------
# ProxylessNAS-Mobile
# --------------------------------------------------------------------------------------------

def proxylessnas_blocks(width: float, rounding: str = "ceil"
                        ) -> Tuple[int, List[Tuple[int, int, int, int]], int]:
    """(stem, [(kernel, expand, cout, stride), ...], feature-mix channels) at ``width``."""
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    if rounding == "ceil":
        rnd = _ceil_div8
    elif rounding == "make_divisible":
        rnd = make_divisible
    else:
        raise ValueError("rounding must be 'ceil' or 'make_divisible'")
    stem = rnd(PROXYLESS_MOBILE_STEM * width)
    blocks = [(k, e, rnd(c * width), s) for k, e, c, s in PROXYLESS_MOBILE_BLOCKS]
    return stem, blocks, rnd(PROXYLESS_MOBILE_LAST * width)


def proxylessnas_graph(width: float = 0.3, resolution: int = 128, num_classes: int = 10,
                       seed: int = 0, last_channels: Optional[int] = None,
                       rounding: str = "ceil") -> Graph:
    """Float ProxylessNAS-Mobile graph at ``width``. ``last_channels`` defaults to the scaled
    feature-mix width (384 at w0.3); 0 drops the feature-mix layer (as tiny-training's copy)."""
    stem, blocks, last = proxylessnas_blocks(width, rounding)
    if last_channels is None:
        last_channels = last
    return _mbnet(resolution, num_classes, seed, stem, blocks, int(last_channels))


def proxylessnas(width: float = 0.3, resolution: int = 128, num_classes: int = 10,
                 seed: int = 0, last_channels: Optional[int] = None,
                 rounding: str = "ceil") -> bytes:
    """ProxylessNAS-Mobile as a .tmpm model (random weights, PTQ)."""
    g = proxylessnas_graph(width, resolution, num_classes, seed, last_channels, rounding)
    return quantize_graph(g, seed)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

def models() -> List[Tuple[str, dict]]:
    """The zoo entries: (builder function name in this module, keyword arguments)."""
    out: List[Tuple[str, dict]] = []
    for width in (0.35, 0.5):
        for res in (96, 128, 144):
            out.append(("mobilenetv2", {"width": width, "resolution": res}))
    out.append(("mcunet", {"resolution": 128, "config": "5fps"}))
    out.append(("proxylessnas", {"width": 0.3, "resolution": 128}))
    return out


_BUILDERS = {"mobilenetv2": mobilenetv2, "mcunet": mcunet, "proxylessnas": proxylessnas}


def build(name: str, **kwargs) -> bytes:
    """Build a zoo model by name ('mobilenetv2', 'mcunet', 'proxylessnas')."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(_BUILDERS)}")
    return _BUILDERS[name](**kwargs)


DEMO_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "demo.tmpm")


def demo() -> bytes:
    """The trained demo model (host/tinymp/models/demo.tmpm, made by tools/train_demo.py)."""
    try:
        with open(DEMO_PATH, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"tinymp: the demo model {DEMO_PATH} is missing; "
                                f"run tools/train_demo.py to make it") from None
