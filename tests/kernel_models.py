"""Random single-kernel models for property tests, built with the low-level writer.

Each model is the layer under test followed, where needed, by a global average pool and a fully
connected classifier, so that it is a complete valid model; tests compare the output of the layer
under test (and the final logits) between the C engine and the numpy reference."""
import numpy as np
from hypothesis import strategies as st

from tinymp.modelfile import Layer, Tensor, write_model

NUM_CLASSES = 3


def rand_scale(rng):
    return float(rng.uniform(0.005, 0.1))


def rand_zp(rng):
    return int(rng.integers(-128, 128))


def rand_act(rng, zp):
    kind = rng.integers(0, 3)
    if kind == 0:
        return -128, 127
    if kind == 1:  # relu
        return zp, 127
    lo = int(rng.integers(-128, 0))
    return lo, int(rng.integers(lo, 128))


def channel_arrays(rng, cout, reduction):
    bias_bound = min(2**31 - 1 - 32640 * reduction, 2**20)
    return dict(
        bias=rng.integers(-bias_bound, bias_bound + 1, size=cout).astype(np.int32),
        mult=rng.integers(2**30, 2**31 - 1, size=cout).astype(np.int32),
        shift=rng.integers(-12, 2, size=cout).astype(np.int32),
        wscale=rng.uniform(0.001, 0.05, size=cout).astype(np.float32),
    )


def weights(rng, shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def tensor(rng, h, w, c):
    return Tensor(h, w, c, rand_scale(rng), rand_zp(rng))


def tail(rng, tensors, layers):
    """Append avgpool (unless already 1x1) and an fc classifier to make a complete model."""
    last = len(tensors) - 1
    t = tensors[last]
    if (t.h, t.w) != (1, 1):
        tensors.append(tensor(rng, 1, 1, t.c))
        m, s = int(rng.integers(2**30, 2**31 - 1)), int(rng.integers(-14, -4))
        layers.append(Layer("avgpool", in0=last, params=(m, s, 0, 0, 0, 0)))
        last += 1
    n = tensors[last].c
    tensors.append(tensor(rng, 1, 1, NUM_CLASSES))
    layers.append(Layer("fc", in0=last, weights=weights(rng, (NUM_CLASSES, n)),
                        **channel_arrays(rng, NUM_CLASSES, n)))
    return write_model(tensors, layers, NUM_CLASSES)


def out_size(n, k, s, pa, pb):
    return (n + pa + pb - k) // s + 1


def conv_like(rng, kind, h, w, cin, cout, k, stride, pads, prefix_pw=False):
    """conv/dwconv/pwconv model. With prefix_pw, a pwconv runs first so the layer under test
    reads an arena tensor (this is what lets the planner run a dwconv in place)."""
    tensors = [tensor(rng, h, w, cin)]
    layers = []
    src = 0
    if prefix_pw:
        tensors.append(tensor(rng, h, w, cin))
        layers.append(Layer("pwconv", in0=0, kh=1, kw=1, stride_h=1, stride_w=1,
                            weights=weights(rng, (cin, cin)), **channel_arrays(rng, cin, cin)))
        src = 1
    zp_out_t = tensor(rng, 1, 1, 1)
    if kind == "pwconv":
        oh, ow, oc = h, w, cout
        layer = Layer("pwconv", in0=src, kh=1, kw=1, stride_h=1, stride_w=1,
                      weights=weights(rng, (cout, cin)), **channel_arrays(rng, cout, cin))
    else:
        pt, pl, pb, pr = pads
        oh = out_size(h, k, stride[0], pt, pb)
        ow = out_size(w, k, stride[1], pl, pr)
        if kind == "dwconv":
            oc = cin
            wt = weights(rng, (k, k, cin))
            arrays = channel_arrays(rng, cin, k * k)
        else:
            oc = cout
            wt = weights(rng, (cout, k, k, cin))
            arrays = channel_arrays(rng, cout, k * k * cin)
        layer = Layer(kind, in0=src, kh=k, kw=k, stride_h=stride[0], stride_w=stride[1],
                      pad=pads, weights=wt, **arrays)
    out_t = Tensor(oh, ow, oc, zp_out_t.scale, zp_out_t.zero_point)
    layer.act_min, layer.act_max = rand_act(rng, out_t.zero_point)
    tensors.append(out_t)
    layers.append(layer)
    index = len(layers) - 1  # before tail() appends the classifier
    return tail(rng, tensors, layers), index


def add_model(rng, h, w, c, inplace_first):
    """pwconv -> add(input, pwconv out): exercises add with two different zero points/scales."""
    tensors = [tensor(rng, h, w, c), tensor(rng, h, w, c)]
    layers = [Layer("pwconv", in0=0, kh=1, kw=1, stride_h=1, stride_w=1,
                    weights=weights(rng, (c, c)), **channel_arrays(rng, c, c))]
    s0, s1, so = tensors[0].scale, tensors[1].scale, rand_scale(rng)
    from tinymp.modelfile import quantize_multiplier
    twice = 2 * max(s0, s1)
    m0, sh0 = quantize_multiplier(s0 / twice)
    m1, sh1 = quantize_multiplier(s1 / twice)
    mo, sho = quantize_multiplier(twice / ((1 << 20) * so))
    out = Tensor(h, w, c, so, rand_zp(rng))
    a = Layer("add", in0=1 if inplace_first else 0, in1=0 if inplace_first else 1,
              params=(m0, sh0, m1, sh1, mo, sho))
    a.act_min, a.act_max = rand_act(rng, out.zero_point)
    tensors.append(out)
    layers.append(a)
    return tail(rng, tensors, layers), 1


def avgpool_model(rng, h, w, c):
    tensors = [tensor(rng, h, w, c), tensor(rng, 1, 1, c)]
    m, s = int(rng.integers(2**30, 2**31 - 1)), int(rng.integers(-14, -2))
    layers = [Layer("avgpool", in0=0, params=(m, s, 0, 0, 0, 0))]
    layers[0].act_min, layers[0].act_max = rand_act(rng, tensors[1].zero_point)
    return tail(rng, tensors, layers), 0


def fc_model(rng, h, w, c):
    tensors = [tensor(rng, h, w, c), tensor(rng, 1, 1, NUM_CLASSES)]
    n = h * w * c
    layers = [Layer("fc", in0=0, weights=weights(rng, (NUM_CLASSES, n)),
                    **channel_arrays(rng, NUM_CLASSES, n))]
    layers[0].act_min, layers[0].act_max = rand_act(rng, tensors[1].zero_point)
    return write_model(tensors, layers, NUM_CLASSES), 0


seeds = st.integers(min_value=0, max_value=2**32 - 1)
