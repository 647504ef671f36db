"""Fork layers (Interp, BN, Upsample, Reorg, ShuffleChannel, Axpy, ReLU6, depthwise
convolutions) against NumPy transcriptions of the forks' C++ loops, and small nets in
the forks' own prototxt syntax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import netspec
from netspec import compiler
from netspec.errors import NetspecError
from netspec.layers import TRAIN
from netspec.prototxt import parse_net
from tests.layer_harness import check_layer_grads, make_layer, random_params, run_layer

jax.config.update("jax_default_matmul_precision", "highest")


def randn(shape, seed=0, scale=1.0):
    return np.asarray(scale * np.random.RandomState(seed).randn(*shape), np.float32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


def run(layer, bottoms, params=(), **kw):
    """run_layer, jitted (one compile instead of one per operation)."""
    return jax.jit(lambda bs, ps: run_layer(layer, bs, ps, **kw))(
        [jnp.asarray(b) for b in bottoms], [jnp.asarray(p) for p in params])


def vjp(layer, bottoms, top_diffs, params=(), wrt=(0,), **kw):
    """Gradients of sum(top * diff) w.r.t. the chosen bottoms and all params."""
    def objective(bs, ps):
        full = list(bottoms)
        for i, b in zip(wrt, bs):
            full[i] = b
        tops = run_layer(layer, full, ps, **kw)
        return sum(jnp.sum(t * d) for t, d in zip(tops, top_diffs))
    grad = jax.jit(jax.grad(objective, argnums=(0, 1)))
    gb, gp = grad([jnp.asarray(bottoms[i]) for i in wrt], [jnp.asarray(p) for p in params])
    return [np.asarray(g) for g in gb], [np.asarray(g) for g in gp]


# =====================================================================================
# Interp: hszhao/PSPNet interp_layer.cpp + util/interp.cpp (caffe_cpu_interp2, non-packed)
# =====================================================================================

def interp_size(h, w, p):
    """InterpLayer::Reshape; ``p`` a dict of the fields set."""
    pad_beg, pad_end = p.get("pad_beg", 0), p.get("pad_end", 0)
    he, we = h + pad_beg + pad_end, w + pad_beg + pad_end
    if "shrink_factor" in p and "zoom_factor" not in p:
        s = p["shrink_factor"]
        return he, we, (he - 1) // s + 1, (we - 1) // s + 1
    if "zoom_factor" in p and "shrink_factor" not in p:
        z = p["zoom_factor"]
        return he, we, he + (he - 1) * (z - 1), we + (we - 1) * (z - 1)
    if "height" in p and "width" in p:
        return he, we, p["height"], p["width"]
    s, z = p["shrink_factor"], p["zoom_factor"]
    ho, wo = (he - 1) // s + 1, (we - 1) // s + 1
    return he, we, ho + (ho - 1) * (z - 1), wo + (wo - 1) * (z - 1)


def interp2_coeffs(height1, height2, h2):
    f32 = np.float32
    rheight = f32(f32(height1 - 1) / f32(height2 - 1)) if height2 > 1 else f32(0)
    h1r = f32(rheight * f32(h2))
    h1 = int(h1r)
    h1p = 1 if h1 < height1 - 1 else 0
    h1lambda = f32(h1r - f32(h1))
    return h1, h1p, h1lambda, f32(f32(1) - h1lambda)


def caffe_interp2(data1, x1, y1, height1, width1, height2, width2):
    """caffe_cpu_interp2<float, false> on (channels, Height1, Width1) planes."""
    channels, Height1, Width1 = data1.shape
    data2 = np.zeros((channels, height2, width2), np.float32)
    if height1 == height2 and width1 == width2:
        for h2 in range(height2):
            for w2 in range(width2):
                data2[:, h2, w2] = data1[:, y1 + h2, x1 + w2]
        return data2
    for h2 in range(height2):
        h1, h1p, h1lambda, h0lambda = interp2_coeffs(height1, height2, h2)
        for w2 in range(width2):
            w1, w1p, w1lambda, w0lambda = interp2_coeffs(width1, width2, w2)
            for c in range(channels):
                pos = data1[c].reshape(-1)
                base = (y1 + h1) * Width1 + (x1 + w1)
                data2[c, h2, w2] = (
                    h0lambda * (w0lambda * pos[base] + w1lambda * pos[base + w1p])
                    + h1lambda * (w0lambda * pos[base + h1p * Width1]
                                  + w1lambda * pos[base + h1p * Width1 + w1p]))
    return data2


def caffe_interp2_backward(diff2, x1, y1, height1, width1, Height1, Width1):
    """caffe_cpu_interp2_backward<float, false>: accumulates into a zeroed bottom diff."""
    channels, height2, width2 = diff2.shape
    data1 = np.zeros((channels, Height1 * Width1), np.float64)
    if height1 == height2 and width1 == width2:
        for h2 in range(height2):
            for w2 in range(width2):
                data1[:, (y1 + h2) * Width1 + x1 + w2] += diff2[:, h2, w2]
        return data1.reshape(channels, Height1, Width1)
    for h2 in range(height2):
        h1, h1p, h1lambda, h0lambda = interp2_coeffs(height1, height2, h2)
        for w2 in range(width2):
            w1, w1p, w1lambda, w0lambda = interp2_coeffs(width1, width2, w2)
            base = (y1 + h1) * Width1 + (x1 + w1)
            g = diff2[:, h2, w2].astype(np.float64)
            data1[:, base] += h0lambda * w0lambda * g
            data1[:, base + w1p] += h0lambda * w1lambda * g
            data1[:, base + h1p * Width1] += h1lambda * w0lambda * g
            data1[:, base + h1p * Width1 + w1p] += h1lambda * w1lambda * g
    return data1.reshape(channels, Height1, Width1)


INTERP_CASES = [
    ((1, 2, 5, 7), {"zoom_factor": 3}),
    ((1, 2, 9, 6), {"shrink_factor": 2}),
    ((2, 1, 9, 7), {"shrink_factor": 2, "zoom_factor": 3}),
    ((1, 3, 4, 6), {"height": 11, "width": 5}),
    ((1, 2, 6, 6), {"height": 1, "width": 4}),
    ((1, 2, 8, 7), {"zoom_factor": 2, "pad_beg": -1, "pad_end": -2}),
    ((1, 2, 5, 7), {"height": 5, "width": 7}),                   # copy
    ((1, 2, 7, 9), {"height": 4, "width": 6, "pad_beg": -1, "pad_end": -1}),
    ((1, 1, 6, 6), {"shrink_factor": 2, "height": 3, "width": 3}),  # shrink wins (the fork's order)
]


def interp_text(p):
    return 'type: "Interp" interp_param { ' + " ".join(f"{k}: {v}" for k, v in p.items()) + " }"


@pytest.mark.parametrize("shape,p", INTERP_CASES)
def test_interp_matches_pspnet_loops_forward_and_backward(shape, p):
    layer = make_layer(interp_text(p), [shape])
    n, c, h, w = shape
    he, we, ho, wo = interp_size(h, w, p)
    assert layer.top_shapes() == [(n, c, ho, wo)]
    x = randn(shape, seed=1)
    (y,) = run(layer, [x])
    off = -p.get("pad_beg", 0)
    expected = np.stack([caffe_interp2(x[i], off, off, he, we, ho, wo) for i in range(n)])
    assert_close(y, expected, rtol=1e-6, atol=1e-6)
    dy = randn((n, c, ho, wo), seed=2)
    (gx,), _ = vjp(layer, [x], [dy])
    expected = np.stack([caffe_interp2_backward(dy[i], off, off, he, we, h, w) for i in range(n)])
    assert_close(gx, expected, rtol=1e-5, atol=1e-6)


def test_interp_float32_lambdas_match_the_fork_bit_for_bit():
    # 33 -> 65 rows (zoom 2) and 60 -> 473: ratios that are not exact in float32
    for h_in, h_out in ((33, 65), (60, 473), (7, 3)):
        layer = make_layer(f'type: "Interp" interp_param {{ height: {h_out} width: 2 }}',
                           [(1, 1, h_in, 2)])
        x = np.random.RandomState(3).rand(1, 1, h_in, 2).astype(np.float32)
        (y,) = run(layer, [x])
        expected = caffe_interp2(x[0], 0, 0, h_in, 2, h_out, 2)
        assert_close(y[0], expected, rtol=2e-7, atol=2e-7)


def test_interp_grads():
    layer = make_layer('type: "Interp" interp_param { zoom_factor: 2 pad_beg: -1 pad_end: 0 }',
                       [(1, 2, 4, 3)])
    check_layer_grads(layer, [randn((1, 2, 4, 3), seed=4)])


@pytest.mark.parametrize("text,match", [
    ('interp_param { height: 4 }', "needs an output size"),
    ('', "needs an output size"),
    ('interp_param { zoom_factor: 0 }', "zoom_factor must be >= 1"),
    ('interp_param { zoom_factor: 2 pad_beg: 1 }', "must be <= 0"),
])
def test_interp_errors(text, match):
    with pytest.raises(NetspecError, match=match):
        make_layer(f'type: "Interp" {text}', [(1, 2, 5, 5)])


# =====================================================================================
# BN, PSPNet: hszhao/PSPNet bn_layer.cpp
# =====================================================================================

PSP_BN = 'type: "BN" bn_param { slope_filler { type: "constant" value: 1 } momentum: 0.95 %s }'


def psp_blobs(c, seed):
    r = np.random.RandomState(seed)
    shape = (1, c, 1, 1)
    return ([r.randn(*shape).astype(np.float32), r.randn(*shape).astype(np.float32)],
            [r.randn(*shape).astype(np.float32), r.rand(*shape).astype(np.float32) + 0.5])


def channel_stats(x):
    """Mean, then mean of squared deviations, over (N, H, W) per channel (the fork's order)."""
    mean = x.astype(np.float64).mean(axis=(2, 3)).mean(axis=0)
    dev = (x - mean[None, :, None, None]) ** 2
    return mean, dev.mean(axis=(2, 3)).mean(axis=0)


def bcast(v):
    return np.asarray(v).reshape(1, -1, 1, 1)


@pytest.mark.parametrize("frozen,train", [(True, False), (True, True), (False, False)])
def test_pspnet_bn_uses_stored_statistics_when_frozen_or_test(frozen, train):
    shape = (2, 3, 4, 5)
    layer = make_layer(PSP_BN % ("frozen: true" if frozen else "eps: 0.001"), [shape],
                       phase=TRAIN if train else 1)
    assert not layer.segnet and layer.param_shapes() == [(1, 3, 1, 1)] * 2
    assert layer.state_shapes() == [(1, 3, 1, 1)] * 2
    (slope, bias), (mean, var) = psp_blobs(3, seed=5)
    x = randn(shape, seed=6)
    eps = 1e-5 if frozen else 1e-3
    (y,), new_state = run(layer, [x], [slope, bias], train=train, state=[mean, var],
                          return_state=True)
    x_norm = (x - mean) * (var + eps) ** -0.5
    assert_close(y, slope * x_norm + bias, rtol=1e-5, atol=1e-5)
    assert new_state is None
    dy = randn(shape, seed=7)
    (gx,), (gs, gb) = vjp(layer, [x], [dy], [slope, bias], train=train, state=[mean, var])
    inv_std = (var + eps) ** -0.5
    if frozen:       # Backward_cpu's frozen branch: top_diff * slope / std; no param diffs
        assert_close(gx, dy * slope * inv_std, rtol=1e-5, atol=1e-6)
        assert not gs.any() and not gb.any()
    else:            # TEST, not frozen: the batch formula on x_norm with the stored std
        d = dy * slope
        m = shape[0] * shape[2] * shape[3]
        sum_xd = (x_norm * d).sum(axis=(0, 2, 3), keepdims=True)
        sum_d = d.sum(axis=(0, 2, 3), keepdims=True)
        assert_close(gx, (d - (x_norm * sum_xd + sum_d) / m) * inv_std, rtol=1e-4, atol=1e-5)
        assert_close(gs, (x_norm * dy).sum(axis=(0, 2, 3), keepdims=True), rtol=1e-4, atol=1e-5)
        assert_close(gb, dy.sum(axis=(0, 2, 3), keepdims=True), rtol=1e-4, atol=1e-5)


def test_pspnet_bn_train_uses_batch_statistics_and_momentum():
    shape = (3, 2, 4, 3)
    layer = make_layer(PSP_BN % "", [shape], phase=TRAIN)
    (slope, bias), (mean, var) = psp_blobs(2, seed=8)
    x = randn(shape, seed=9, scale=2.0) + 1.0
    (y,), new_state = run(layer, [x], [slope, bias], train=True, state=[mean, var],
                          return_state=True)
    bm, bv = channel_stats(x)
    assert_close(y, slope * (x - bcast(bm)) / np.sqrt(bcast(bv) + 1e-5) + bias, rtol=1e-5, atol=1e-5)
    assert_close(new_state[0], 0.05 * bcast(bm) + 0.95 * mean)     # (1 - momentum) * batch + momentum * old
    assert_close(new_state[1], 0.05 * bcast(bv) + 0.95 * var)      # biased variance, no m/(m-1)
    small = make_layer(PSP_BN % "", [(2, 2, 2, 2)], phase=TRAIN)
    check_layer_grads(small, [x[:2, :, :2, :2]], [slope, bias], train=True, rtol=1e-3, atol=1e-5)


# =====================================================================================
# BN, SegNet: alexgkendall/caffe-segnet bn_layer.cpp
# =====================================================================================

SEG_BN = ('type: "BN" bn_param { %s scale_filler { type: "constant" value: 1 } '
          'shift_filler { type: "constant" value: 0.001 } }')


def test_segnet_bn_learn_uses_batch_statistics_in_every_phase_with_stat_tops():
    shape = (2, 3, 4, 5)
    layer = make_layer(SEG_BN % "", [shape], num_tops=3)          # TEST phase: still LEARN
    assert layer.segnet and layer.state_shapes() == []
    assert layer.top_shapes() == [shape, (1, 3, 1, 1), (1, 3, 1, 1)]
    scale, shift = randn((1, 3, 1, 1), seed=10), randn((1, 3, 1, 1), seed=11)
    x = randn(shape, seed=12) + 0.5
    y, mean_top, var_top = run(layer, [x], [scale, shift])
    x64 = x.astype(np.float64)
    ex = x64.mean(axis=(2, 3)).mean(axis=0)
    ex2 = (x64 ** 2).mean(axis=(2, 3)).mean(axis=0)
    var = ex2 - ex ** 2                                            # E(X^2) - (EX)^2
    assert_close(mean_top, bcast(ex), rtol=1e-5, atol=1e-6)
    assert_close(var_top, bcast(var), rtol=1e-4, atol=1e-5)
    assert_close(y, scale * (x64 - bcast(ex)) / np.sqrt(bcast(var) + 1e-9) + shift,
                 rtol=1e-4, atol=1e-4)
    one_top = make_layer(SEG_BN % "bn_mode: LEARN", [(2, 2, 2, 2)], phase=TRAIN)
    check_layer_grads(one_top, [x[:, :2, :2, :2]], [scale[:, :2], shift[:, :2]], rtol=1e-3,
                      atol=1e-5)


def test_segnet_bn_inference_is_scale_and_shift():
    shape = (2, 3, 2, 3)
    layer = make_layer(SEG_BN % "bn_mode: INFERENCE", [shape], phase=TRAIN)
    scale, shift = randn((1, 3, 1, 1), seed=13), randn((1, 3, 1, 1), seed=14)
    x = randn(shape, seed=15)
    (y,) = run(layer, [x], [scale, shift], train=True)
    assert_close(y, x * scale + shift)
    check_layer_grads(layer, [x], [scale, shift])


def test_bn_disambiguation():
    assert not make_layer('type: "BN"', [(1, 2, 3, 3)]).segnet            # no bn_param: PSPNet
    assert make_layer('type: "BN"', [(1, 2, 3, 3)], num_tops=2).segnet    # stat tops: SegNet
    assert make_layer('type: "BN" bn_param { bn_mode: INFERENCE }', [(1, 2, 3, 3)]).segnet
    with pytest.raises(NetspecError, match="mixes SegNet's fields"):
        make_layer('type: "BN" bn_param { bn_mode: LEARN frozen: true }', [(1, 2, 3, 3)])
    with pytest.raises(NetspecError, match="only SegNet's BN has more than one top"):
        make_layer('type: "BN" bn_param { frozen: true }', [(1, 2, 3, 3)], num_tops=2)
    with pytest.raises(NetspecError, match="statistics blobs"):
        run(make_layer('type: "BN"', [(1, 2, 3, 3)]), [randn((1, 2, 3, 3))], psp_blobs(2, 0)[0])


# =====================================================================================
# Upsample
# =====================================================================================

def yolo_upsample(x, scale):
    """eric612/MobileNet-YOLO upsample_layer.cpp Forward_cpu."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h * scale, w * scale), x.dtype)
    for i in range(n):
        for j in range(c):
            for hh in range(h * scale):
                for ww in range(w * scale):
                    out[i, j, hh, ww] = x[i, j, hh // scale, ww // scale]
    return out


def test_nearest_upsample_forward_and_summed_gradient():
    shape = (2, 3, 3, 4)
    layer = make_layer('type: "Upsample" upsample_param { scale: 3 }', [shape])
    assert layer.top_shapes() == [(2, 3, 9, 12)]
    x = randn(shape, seed=16)
    (y,) = run(layer, [x])
    assert_close(y, yolo_upsample(x, 3), rtol=0, atol=0)
    dy = randn((2, 3, 9, 12), seed=17)
    (gx,), _ = vjp(layer, [x], [dy])
    assert_close(gx, dy.reshape(2, 3, 3, 3, 4, 3).sum(axis=(3, 5)), rtol=1e-5)
    check_layer_grads(make_layer('type: "Upsample" upsample_param { scale: 2 }', [(1, 2, 2, 3)]),
                      [randn((1, 2, 2, 3), seed=18)])


def segnet_unpool(x, mask, oh, ow):
    """alexgkendall/caffe-segnet upsample_layer.cpp Forward_cpu."""
    n, c, h, w = x.shape
    top = np.zeros((n, c, oh * ow), x.dtype)
    for i in range(n):
        for j in range(c):
            for k in range(h * w):
                idx = int(mask[i, j].reshape(-1)[k])
                assert idx < oh * ow
                top[i, j, idx] = x[i, j].reshape(-1)[k]
    return top.reshape(n, c, oh, ow)


def segnet_unpool_backward(dtop, mask):
    n, c, h, w = mask.shape
    flat = dtop.reshape(n, c, -1)
    dx = np.zeros((n, c, h * w), dtop.dtype)
    for i in range(n):
        for j in range(c):
            for k in range(h * w):
                dx[i, j, k] = flat[i, j, int(mask[i, j].reshape(-1)[k])]
    return dx.reshape(n, c, h, w)


@pytest.mark.parametrize("text,out", [
    ("", (6, 8)),                                      # SegNet's default scale 2
    ("scale: 2 pad_out_h: true", (5, 8)),
    ("scale_h: 3 scale_w: 2", (9, 8)),
    ("upsample_h: 7 upsample_w: 9", (7, 9)),
])
def test_segnet_unpooling_sizes_values_repeats_and_gather_gradient(text, out):
    shape = (2, 2, 3, 4)
    layer = make_layer(f'type: "Upsample" upsample_param {{ {text} }}', [shape, shape])
    assert layer.top_shapes() == [shape[:2] + out]
    r = np.random.RandomState(19)
    mask = r.randint(0, out[0] * out[1], size=shape).astype(np.float32)
    mask[0, 0, 0, :2] = mask[0, 0, 1, 3]                # repeated indices: the last one wins
    x = randn(shape, seed=20)
    (y,) = run(layer, [x, mask])
    assert_close(y, segnet_unpool(x, mask, *out), rtol=0, atol=0)
    dy = randn(shape[:2] + out, seed=21)
    (gx, gm), _ = vjp(layer, [x, mask], [dy], wrt=(0, 1))
    assert_close(gx, segnet_unpool_backward(dy, mask), rtol=0, atol=0)
    assert not gm.any()


def caffe_max_pool_mask(x, k, s):
    """BVLC pooling_layer.cpp MAX (pad 0, ceil rounding): top and mask h * W + w."""
    n, c, h, w = x.shape
    oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    top = np.full((n, c, oh, ow), -np.inf, np.float32)
    mask = np.full((n, c, oh, ow), -1, np.float32)
    for i in range(n):
        for j in range(c):
            for ph in range(oh):
                for pw in range(ow):
                    for hh in range(ph * s, min(ph * s + k, h)):
                        for ww in range(pw * s, min(pw * s + k, w)):
                            if x[i, j, hh, ww] > top[i, j, ph, pw]:
                                top[i, j, ph, pw] = x[i, j, hh, ww]
                                mask[i, j, ph, pw] = hh * w + ww
    return top, mask


SEGNET = '''name: "segnet_tiny"
input: "data"
input_dim: 2
input_dim: 3
input_dim: 9
input_dim: 8
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "msra" } bias_filler { type: "constant" }
  }
}
layer {
  bottom: "conv1"
  top: "conv1"
  name: "conv1_bn"
  type: "BN"
  bn_param {
\tbn_mode: INFERENCE
\tscale_filler { type: "constant" value: 1 }
\tshift_filler { type: "constant" value: 0.001 }
 }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  top: "pool1_mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "msra" } }
}
layer {
  bottom: "conv2"
  top: "conv2"
  name: "conv2_bn"
  type: "BN"
  bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } }
}
layer {
  name: "upsample1"
  type: "Upsample"
  bottom: "conv2"
  bottom: "pool1_mask"
  top: "upsample1"
  upsample_param { scale: 2 pad_out_h: true }
}
layer {
  name: "conv_decode1"
  type: "Convolution"
  bottom: "upsample1"
  top: "conv_decode1"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "msra" } }
}
'''


def test_segnet_encoder_decoder_net_pooling_mask_convention():
    net = netspec.Net(parse_net(SEGNET), phase=netspec.TRAIN)
    x = randn((2, 3, 9, 8), seed=22)
    net.forward(data=x)
    conv1 = np.array(net.blobs["conv1"].data)
    pooled, mask = caffe_max_pool_mask(conv1, 2, 2)          # 9 -> 5 rows (ceil): pad_out_h gives 9
    assert_close(net.blobs["pool1_mask"].data, mask, rtol=0, atol=0)
    assert_close(net.blobs["pool1"].data, pooled, rtol=0, atol=0)
    conv2 = np.array(net.blobs["conv2"].data)
    assert net.blobs["upsample1"].data.shape == (2, 4, 9, 8)
    assert_close(net.blobs["upsample1"].data, segnet_unpool(conv2, mask, 9, 8), rtol=1e-6, atol=1e-6)
    assert [b.data.shape for b in net.params["conv2_bn"]] == [(1, 4, 1, 1)] * 2
    dtop = randn((2, 2, 9, 8), seed=23)
    net.backward(conv_decode1=dtop)
    assert np.isfinite(net.params["conv1"][0].diff).all() and np.abs(net.params["conv1"][0].diff).sum() > 0
    assert np.abs(net.params["conv2_bn"][0].diff).sum() > 0


def test_segnet_bn_blobs_round_trip_through_a_caffemodel(tmp_path):
    source = netspec.Net(parse_net(SEGNET), phase=netspec.TEST)
    source.params["conv1_bn"][0].data[...] = randn((1, 4, 1, 1), seed=55)
    path = str(tmp_path / "segnet.caffemodel")
    source.save(path)
    target = netspec.Net(parse_net(SEGNET), path, phase=netspec.TEST)
    assert len(target.params["conv1_bn"]) == 2
    assert_close(target.params["conv1_bn"][0].data, source.params["conv1_bn"][0].data, rtol=0, atol=0)


def test_upsample_errors():
    with pytest.raises(NetspecError, match="needs upsample_param.scale"):
        make_layer('type: "Upsample"', [(1, 2, 3, 3)])
    with pytest.raises(NetspecError, match="two bottoms"):
        make_layer('type: "Upsample" upsample_param { scale: 2 upsample_h: 6 }', [(1, 2, 3, 3)])
    with pytest.raises(NetspecError, match="mask .* must have bottom 0's shape"):
        make_layer('type: "Upsample"', [(1, 2, 3, 3), (1, 2, 3, 4)])
    with pytest.raises(NetspecError, match="scale of 2"):
        make_layer('type: "Upsample" upsample_param { scale: 3 pad_out_w: true }',
                   [(1, 2, 3, 3)] * 2)
    with pytest.raises(NetspecError, match="not scale with scale_h"):
        make_layer('type: "Upsample" upsample_param { scale: 3 scale_h: 2 scale_w: 2 }',
                   [(1, 2, 3, 3)] * 2)


YOLO3 = '''name: "yolov3_route"
input: "data"
input_shape { dim: 1 dim: 4 dim: 8 dim: 8 }
layer {
    bottom: "data"
    top: "layer1-conv"
    name: "layer1-conv"
    type: "Convolution"
    convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 bias_term: false weight_filler { type: "msra" } }
}
layer {
    bottom: "layer1-conv"
    top: "layer1-conv"
    name: "layer1-act"
    type: "ReLU"
    relu_param { negative_slope: 0.1 }
}
layer {
    bottom: "layer1-conv"
    top: "layer2-conv"
    name: "layer2-conv"
    type: "Convolution"
    convolution_param { num_output: 3 kernel_size: 1 bias_term: false weight_filler { type: "msra" } }
}
layer {
    bottom: "layer2-conv"
    top: "layer3-upsample"
    name: "layer3-upsample"
    type: "Upsample"
    upsample_param {
        scale: 2
    }
}
layer {
    bottom: "layer3-upsample"
    bottom: "data"
    top: "layer4-route"
    name: "layer4-route"
    type: "Concat"
}
'''


def test_yolov3_route_with_nearest_upsample_net():
    net = netspec.Net(parse_net(YOLO3), phase=netspec.TRAIN)
    x = randn((1, 4, 8, 8), seed=24)
    out = net.forward(data=x)["layer4-route"]
    small = np.array(net.blobs["layer2-conv"].data)
    assert out.shape == (1, 7, 8, 8)
    assert_close(out[:, :3], yolo_upsample(small, 2), rtol=0, atol=0)
    assert_close(out[:, 3:], x, rtol=0, atol=0)
    dtop = randn((1, 7, 8, 8), seed=25)
    net.backward(**{"layer4-route": dtop})
    assert np.abs(net.params["layer2-conv"][0].diff).sum() > 0


# =====================================================================================
# Reorg: eric612/MobileNet-YOLO reorg_layer.hpp reorg_cpu (Darknet)
# =====================================================================================

def darknet_reorg(x, stride, forward):
    """reorg_cpu(bottom, b_w, b_h, b_c, b_n, stride, forward, top) over a flat buffer."""
    b_n, b_c, b_h, b_w = x.shape
    src = x.reshape(-1)
    out = np.zeros_like(src)
    t_c, t_w, t_h = b_c // (stride * stride), b_w * stride, b_h * stride
    for n in range(b_n):
        for c in range(b_c):
            for h in range(b_h):
                for w in range(b_w):
                    bottom_index = w + b_w * (h + b_h * (c + b_c * n))
                    c2 = c % t_c
                    offset = c // t_c
                    w2 = w * stride + offset % stride
                    h2 = h * stride + offset // stride
                    top_index = w2 + t_w * (h2 + t_h * (c2 + t_c * n))
                    if forward:
                        out[top_index] = src[bottom_index]
                    else:
                        out[bottom_index] = src[top_index]
    return out


@pytest.mark.parametrize("reverse", [False, True])
def test_reorg_matches_darknet_order_and_is_not_space_to_depth(reverse):
    shape = (2, 8, 4, 6)
    layer = make_layer(f'type: "Reorg" reorg_param {{ stride: 2 reverse: {str(reverse).lower()} }}',
                       [shape])
    out = (2, 2, 8, 12) if reverse else (2, 32, 2, 3)
    assert layer.top_shapes() == [out]
    x = randn(shape, seed=26)
    (y,) = run(layer, [x])
    assert_close(y, darknet_reorg(x, 2, forward=reverse).reshape(out), rtol=0, atol=0)
    dy = randn(out, seed=27)
    (gx,), _ = vjp(layer, [x], [dy])
    # Darknet's backward: reorg_cpu(delta, ..., !forward) -- the inverse permutation
    perm = darknet_reorg(np.arange(x.size, dtype=np.float32).reshape(shape), 2, reverse)
    inverse = np.zeros(x.size, np.float32)
    inverse[perm.astype(int)] = dy.reshape(-1)        # top[k] = bottom[perm[k]]
    assert_close(gx, inverse.reshape(shape), rtol=0, atol=0)
    if not reverse:
        s2d = x.reshape(2, 8, 2, 2, 3, 2).transpose(0, 3, 5, 1, 2, 4).reshape(out)
        assert not np.allclose(y, s2d)


def test_reorg_errors():
    with pytest.raises(NetspecError, match="needs stride"):
        make_layer('type: "Reorg"', [(1, 4, 4, 4)])
    with pytest.raises(NetspecError, match="must divide"):
        make_layer('type: "Reorg" reorg_param { stride: 2 }', [(1, 4, 5, 4)])
    with pytest.raises(NetspecError, match="in-place"):
        make_layer('type: "Reorg" reorg_param { stride: 2 } bottom: "x" top: "x"', [(1, 4, 4, 4)])


YOLO2 = '''name: "yolov2_passthrough"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer {
  name: "conv21"
  type: "Convolution"
  bottom: "data"
  top: "conv21"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "msra" } }
}
layer {
  name: "pool"
  type: "Pooling"
  bottom: "conv21"
  top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "reorg1"
  type: "Reorg"
  bottom: "conv21"
  top: "reorg1"
  reorg_param {
    stride: 2
  }
}
layer {
  name: "concat"
  type: "Concat"
  bottom: "reorg1"
  bottom: "pool"
  top: "concat"
}
'''


def test_yolov2_reorg_net_forward_backward():
    net = netspec.Net(parse_net(YOLO2), phase=netspec.TRAIN)
    out = net.forward(data=randn((1, 3, 8, 8), seed=28))["concat"]
    assert out.shape == (1, 20, 4, 4)
    conv = np.array(net.blobs["conv21"].data)
    assert_close(out[:, :16], darknet_reorg(conv, 2, False).reshape(1, 16, 4, 4), rtol=0, atol=0)
    net.backward(concat=np.ones((1, 20, 4, 4), np.float32))
    # every conv21 cell reaches the top through the reorg: d/dW of the sum is nonzero
    assert np.abs(net.params["conv21"][0].diff).sum() > 0


# =====================================================================================
# ShuffleChannel: farmingyard/ShuffleNet shuffle_channel_layer.cpp
# =====================================================================================

def shuffle_resize(x, group_row, group_column):
    """Resize_cpu on each item: output block j * group_row + i = input block i * group_column + j."""
    out = np.zeros_like(x)
    for i in range(group_row):
        for j in range(group_column):
            out[:, j * group_row + i] = x[:, i * group_column + j]
    return out


def test_shuffle_channel_matches_fork_forward_and_backward():
    shape = (2, 6, 3, 2)
    layer = make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 3 }', [shape])
    x = randn(shape, seed=29)
    (y,) = run(layer, [x])
    assert_close(y, shuffle_resize(x, 3, 2), rtol=0, atol=0)
    dy = randn(shape, seed=30)
    (gx,), _ = vjp(layer, [x], [dy])
    assert_close(gx, shuffle_resize(dy, 2, 3), rtol=0, atol=0)   # Backward_cpu: rows/cols swapped
    with pytest.raises(NetspecError, match="must divide the channels"):
        make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 4 }', [shape])
    with pytest.raises(NetspecError, match="group must be > 0"):
        make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 0 }', [shape])


SHUFFLENET = '''name: "shufflenet_unit"
input: "data"
input_shape { dim: 1 dim: 6 dim: 6 dim: 6 }
layer {
  name: "resx2_conv1"
  type: "Convolution"
  bottom: "data"
  top: "resx2_conv1"
  convolution_param {
    num_output: 6 kernel_size: 1 stride: 1 pad: 0 group: 3 bias_term: false weight_filler { type: "msra" }
  }
}
layer {
  name: "resx2_conv1_bn"
  type: "BatchNorm"
  bottom: "resx2_conv1"
  top: "resx2_conv1"
  param { lr_mult: 0 decay_mult: 0 }
  param { lr_mult: 0 decay_mult: 0 }
  param { lr_mult: 0 decay_mult: 0 }
}
layer { name: "resx2_conv1_relu" type: "ReLU" bottom: "resx2_conv1" top: "resx2_conv1" }
layer {
  name: "shuffle2"
  type: "ShuffleChannel"
  bottom: "resx2_conv1"
  top: "shuffle2"
  shuffle_channel_param {
    group: 3
  }
}
layer {
  name: "resx2_conv2"
  type: "ConvolutionDepthwise"
  bottom: "shuffle2"
  top: "resx2_conv2"
  convolution_param { num_output: 6 kernel_size: 3 stride: 1 pad: 1 bias_term: false weight_filler { type: "msra" } }
}
layer {
  name: "resx2_conv3"
  type: "Convolution"
  bottom: "resx2_conv2"
  top: "resx2_conv3"
  convolution_param { num_output: 6 kernel_size: 1 group: 3 bias_term: false weight_filler { type: "msra" } }
}
layer {
  name: "resx2_elewise"
  type: "Eltwise"
  bottom: "data"
  bottom: "resx2_conv3"
  top: "resx2_elewise"
  eltwise_param { operation: SUM }
}
'''


def depthwise_reference(x, w, pad):
    n, c, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, c, h + 2 * pad - k + 1, wd + 2 * pad - k + 1), np.float64)
    for i in range(k):
        for j in range(k):
            out += xp[:, :, i:i + out.shape[2], j:j + out.shape[3]] * w[None, :, 0, i, j, None, None]
    return out


def test_shufflenet_unit_net():
    net = netspec.Net(parse_net(SHUFFLENET), phase=netspec.TEST)
    for blob in net.params["resx2_conv1_bn"]:
        blob.data[...] = 1.0                      # mean 1/1, var 1/1
    x = randn((1, 6, 6, 6), seed=31)
    net.forward(data=x)
    conv1 = np.array(net.blobs["resx2_conv1"].data)
    shuffled = np.array(net.blobs["shuffle2"].data)
    assert_close(shuffled, shuffle_resize(conv1, 3, 2), rtol=0, atol=0)
    assert [b.data.shape for b in net.params["resx2_conv2"]] == [(6, 1, 3, 3)]
    w = np.array(net.params["resx2_conv2"][0].data)
    assert_close(net.blobs["resx2_conv2"].data, depthwise_reference(shuffled, w, 1), rtol=1e-5,
                 atol=1e-5)
    net.backward(resx2_elewise=randn((1, 6, 6, 6), seed=32))
    assert np.abs(net.params["resx2_conv2"][0].diff).sum() > 0


# =====================================================================================
# Depthwise convolutions
# =====================================================================================

@pytest.mark.parametrize("type_,extra", [
    ("DepthwiseConvolution", "num_output: 4 group: 4"),
    ("ConvolutionDepthwise", "num_output: 4"),
    ("ConvolutionDepthwise", ""),
])
def test_depthwise_convolution_is_grouped_convolution(type_, extra):
    shape = (2, 4, 5, 5)
    layer = make_layer(f'type: "{type_}" convolution_param {{ {extra} kernel_size: 3 pad: 1 stride: 2 }}',
                       [shape])
    assert layer.param_shapes() == [(4, 1, 3, 3), (4,)]
    reference = make_layer('type: "Convolution" convolution_param { num_output: 4 group: 4 '
                           'kernel_size: 3 pad: 1 stride: 2 }', [shape])
    params = random_params(layer, seed=33)
    x = randn(shape, seed=34)
    assert_close(run(layer, [x], params)[0], run(reference, [x], params)[0])
    check_layer_grads(make_layer(f'type: "{type_}" convolution_param {{ kernel_size: 2 }}',
                                 [(1, 2, 3, 3)]), [randn((1, 2, 3, 3), seed=35)],
                      [randn((2, 1, 2, 2), 37), randn((2,), 38)])


def test_depthwise_errors():
    with pytest.raises(NetspecError, match="group = channels"):
        make_layer('type: "DepthwiseConvolution" convolution_param { num_output: 4 group: 2 '
                   'kernel_size: 3 }', [(1, 4, 5, 5)])
    with pytest.raises(NetspecError, match="num_output = channels"):
        make_layer('type: "ConvolutionDepthwise" convolution_param { num_output: 8 kernel_size: 3 }',
                   [(1, 4, 5, 5)])


# =====================================================================================
# Axpy: hujie-frank/SENet axpy_layer.cpp
# =====================================================================================

def axpy_loops(a, x, y):
    n, c = x.shape[:2]
    top = y.copy().reshape(n, c, -1)
    xf = x.reshape(n, c, -1)
    for i in range(n):
        for j in range(c):
            top[i, j] += a.reshape(n, c)[i, j] * xf[i, j]
    return top.reshape(x.shape)


@pytest.mark.parametrize("a_shape", [(2, 3, 1, 1), (2, 3)])
def test_axpy_forward_and_gradients(a_shape):
    shape = (2, 3, 4, 2)
    layer = make_layer('type: "Axpy"', [a_shape, shape, shape])
    a, x, y = randn(a_shape, 39), randn(shape, 40), randn(shape, 41)
    (top,) = run(layer, [a, x, y])
    assert_close(top, axpy_loops(a, x, y))
    dtop = randn(shape, 42)
    (ga, gx, gy), _ = vjp(layer, [a, x, y], [dtop], wrt=(0, 1, 2))
    assert_close(ga, (dtop * x).sum(axis=(2, 3)).reshape(a_shape), rtol=1e-5)   # gemv over the plane
    assert_close(gx, dtop * a.reshape(2, 3, 1, 1))
    assert_close(gy, dtop)
    check_layer_grads(make_layer('type: "Axpy"', [(1, 2, 1, 1), (1, 2, 2, 2), (1, 2, 2, 2)]),
                      [randn((1, 2, 1, 1), 43), randn((1, 2, 2, 2), 44), randn((1, 2, 2, 2), 45)])


def test_axpy_errors():
    with pytest.raises(NetspecError, match="one value per"):
        make_layer('type: "Axpy"', [(2, 3, 2, 1), (2, 3, 4, 4), (2, 3, 4, 4)])
    with pytest.raises(NetspecError, match="one shape"):
        make_layer('type: "Axpy"', [(2, 3, 1, 1), (2, 3, 4, 4), (2, 3, 4, 5)])
    with pytest.raises(NetspecError, match="takes 3 bottoms"):
        make_layer('type: "Axpy"', [(2, 3, 1, 1), (2, 3, 4, 4)])


SE_AXPY = '''name: "se_axpy"
input: "data"
input_shape { dim: 2 dim: 8 dim: 5 dim: 5 }
layer {
  name: "conv"
  type: "Convolution"
  bottom: "data"
  top: "conv"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } }
}
layer {
  name: "conv_global_pool"
  type: "Pooling"
  bottom: "conv"
  top: "conv_global_pool"
  pooling_param { pool: AVE engine: CAFFE global_pooling: true }
}
layer {
  name: "conv_1x1_down"
  type: "Convolution"
  bottom: "conv_global_pool"
  top: "conv_1x1_down"
  convolution_param { num_output: 2 kernel_size: 1 stride: 1 weight_filler { type: "msra" } }
}
layer { name: "conv_1x1_down/relu" type: "ReLU" bottom: "conv_1x1_down" top: "conv_1x1_down" }
layer {
  name: "conv_1x1_up"
  type: "Convolution"
  bottom: "conv_1x1_down"
  top: "conv_1x1_up"
  convolution_param { num_output: 8 kernel_size: 1 stride: 1 weight_filler { type: "msra" } }
}
layer { name: "conv_prob" type: "Sigmoid" bottom: "conv_1x1_up" top: "conv_1x1_up" }
layer {
  name: "axpy"
  type: "Axpy"
  bottom: "conv_1x1_up"
  bottom: "conv"
  bottom: "data"
  top: "out"
}
'''


def test_se_block_with_axpy_net():
    net = netspec.Net(parse_net(SE_AXPY), phase=netspec.TRAIN)
    x = randn((2, 8, 5, 5), seed=46)
    out = net.forward(data=x)["out"]
    scale = np.array(net.blobs["conv_1x1_up"].data)
    conv = np.array(net.blobs["conv"].data)
    assert scale.shape == (2, 8, 1, 1) and ((scale > 0) & (scale < 1)).all()
    assert_close(out, axpy_loops(scale, conv, x), rtol=1e-5, atol=1e-6)
    net.backward(out=randn((2, 8, 5, 5), seed=47))
    for name in ("conv", "conv_1x1_down", "conv_1x1_up"):
        assert np.abs(net.params[name][0].diff).sum() > 0, name


# =====================================================================================
# ReLU6: eric612/MobileNet-YOLO relu6_layer.cpp
# =====================================================================================

def test_relu6_forward_and_caffe_gradient_at_the_kinks():
    x = np.array([[-2.0, 0.0, 0.5, 5.999, 6.0, 7.5]], np.float32)
    layer = make_layer('type: "ReLU6"', [x.shape])
    (y,) = run(layer, [x])
    assert_close(y, [[0.0, 0.0, 0.5, 5.999, 6.0, 6.0]])
    (gx,), _ = vjp(layer, [x], [np.ones_like(x)])
    # (x > 0) + slope * (x <= 0), times (x < 6)
    assert_close(gx, [[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]], rtol=0, atol=0)
    check_layer_grads(make_layer('type: "ReLU6"', [(2, 3, 2, 2)]),
                      [randn((2, 3, 2, 2), 48, scale=4.0) + 3.0])


# =====================================================================================
# PSPNet pyramid pooling module
# =====================================================================================

def psp_branch(bins):
    kernel = 12 // bins
    return f'''
layer {{
  name: "conv5_3_pool{bins}"
  type: "Pooling"
  bottom: "conv5_3"
  top: "conv5_3_pool{bins}"
  pooling_param {{
    pool: AVE
    kernel_size: {kernel}
    stride: {kernel}
  }}
}}
layer {{
  name: "conv5_3_pool{bins}_conv"
  type: "Convolution"
  bottom: "conv5_3_pool{bins}"
  top: "conv5_3_pool{bins}_conv"
  param {{
    lr_mult: 10
    decay_mult: 1
  }}
  convolution_param {{
    num_output: 2
    kernel_size: 1
    stride: 1
    weight_filler {{
      type: "msra"
    }}
    bias_term: false
  }}
}}
layer {{
  name: "conv5_3_pool{bins}_conv/bn"
  type: "BN"
  bottom: "conv5_3_pool{bins}_conv"
  top: "conv5_3_pool{bins}_conv"
  param {{
    lr_mult: 10
    decay_mult: 0
  }}
  param {{
    lr_mult: 10
    decay_mult: 0
  }}
  param {{
    lr_mult: 0
    decay_mult: 0
  }}
  param {{
    lr_mult: 0
    decay_mult: 0
  }}
  bn_param {{
    slope_filler {{
      type: "constant"
      value: 1
    }}
    bias_filler {{
      type: "constant"
      value: 0
    }}
    frozen: true
    momentum: 0.95
  }}
}}
layer {{
  name: "conv5_3_pool{bins}_conv/relu"
  type: "ReLU"
  bottom: "conv5_3_pool{bins}_conv"
  top: "conv5_3_pool{bins}_conv"
}}
layer {{
  name: "conv5_3_pool{bins}_interp"
  type: "Interp"
  bottom: "conv5_3_pool{bins}_conv"
  top: "conv5_3_pool{bins}_interp"
  interp_param {{
    height: 12
    width: 12
  }}
}}'''


PSPNET = ('name: "pspnet_ppm"\ninput: "conv5_3"\ninput_shape { dim: 1 dim: 4 dim: 12 dim: 12 }'
          + "".join(psp_branch(b) for b in (1, 2, 3, 6)) + '''
layer {
  name: "conv5_3_concat"
  type: "Concat"
  bottom: "conv5_3"
  bottom: "conv5_3_pool6_interp"
  bottom: "conv5_3_pool3_interp"
  bottom: "conv5_3_pool2_interp"
  bottom: "conv5_3_pool1_interp"
  top: "conv5_3_concat"
}
layer {
  name: "conv6"
  type: "Convolution"
  bottom: "conv5_3_concat"
  top: "conv6"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "msra" } }
}
layer {
  name: "conv6_interp"
  type: "Interp"
  bottom: "conv6"
  top: "conv6_interp"
  interp_param {
    zoom_factor: 2
  }
}
''')


def split_blobs(net):
    """The pure API's params and state from a Net's per-layer blobs (learned, then stored)."""
    params, state = {}, {}
    for node in net.graph.nodes:
        blobs = [jnp.asarray(b.data) for b in net.layer_dict[node.name].blobs]
        owned = [b for (owner, _), b in zip(node.param_keys, blobs) if owner == node.name]
        if owned:
            params[node.name] = owned
        if node.name in net.graph.state_shapes:
            state[node.name] = blobs[len(node.param_keys):]
    return params, state


def test_pspnet_pyramid_pooling_module_net():
    net = netspec.Net(parse_net(PSPNET), phase=netspec.TRAIN)
    r = np.random.RandomState(49)
    for b in (1, 2, 3, 6):
        slope, bias, mean, var = net.params[f"conv5_3_pool{b}_conv/bn"]
        assert slope.data.shape == mean.data.shape == (1, 2, 1, 1)
        slope.data[...] = r.rand(1, 2, 1, 1) + 0.5
        bias.data[...] = r.randn(1, 2, 1, 1)
        mean.data[...] = r.randn(1, 2, 1, 1)
        var.data[...] = r.rand(1, 2, 1, 1) + 0.5
    assert net.graph.state_shapes["conv5_3_pool1_conv/bn"] == [(1, 2, 1, 1)] * 2
    params, state = split_blobs(net)
    x = randn((1, 4, 12, 12), seed=50)
    dtop = randn((1, 3, 23, 23), seed=51)

    def objective(params):
        blobs, _, new_state = compiler.forward(net.graph, params, state, {"conv5_3": x}, train=True)
        return jnp.sum(blobs["conv6_interp"] * dtop), (blobs, new_state)
    grads, (blobs, new_state) = jax.jit(jax.grad(objective, has_aux=True))(params)
    assert blobs["conv6_interp"].shape == (1, 3, 23, 23)     # 12 + 11 * (2 - 1)
    for b in (1, 2, 3, 6):
        name = f"conv5_3_pool{b}_conv/bn"
        slope, bias, mean, var = (np.array(p.data) for p in net.params[name])
        k = 12 // b
        pooled = x.reshape(1, 4, b, k, b, k).mean(axis=(3, 5))
        w = np.array(net.params[f"conv5_3_pool{b}_conv"][0].data)[:, :, 0, 0]
        conv = np.einsum("oc,nchw->nohw", w, pooled)
        act = np.maximum(slope * (conv - mean) / np.sqrt(var + 1e-5) + bias, 0)
        expected = caffe_interp2(act[0], 0, 0, b, b, 12, 12)
        assert_close(blobs[f"conv5_3_pool{b}_interp"][0], expected, rtol=1e-4, atol=1e-5)
        # frozen: the statistics stay, slope and bias get no diff (the fork's Backward_cpu)
        assert_close(new_state[name][0], mean, rtol=0, atol=0)
        assert not np.asarray(grads[name][0]).any() and not np.asarray(grads[name][1]).any()
    assert np.abs(np.asarray(grads["conv5_3_pool2_conv"][0])).sum() > 0
    assert np.abs(np.asarray(grads["conv6"][0])).sum() > 0


PSP_TRAIN = """name: "psp_bn_train"
input: "data"
input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
layer {
  name: "conv"
  type: "Convolution"
  bottom: "data"
  top: "conv"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "msra" } }
}
layer {
  name: "conv/bn"
  type: "BN"
  bottom: "conv"
  top: "conv"
  param { lr_mult: 1 decay_mult: 0 }
  param { lr_mult: 1 decay_mult: 0 }
  param { lr_mult: 0 decay_mult: 0 }
  param { lr_mult: 0 decay_mult: 0 }
  bn_param { slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0 } momentum: 0.9 }
}
"""


def test_pspnet_bn_in_a_net_object():
    net = netspec.Net(parse_net(PSPNET), phase=netspec.TEST)
    assert net.forward(conv5_3=randn((1, 4, 12, 12), seed=52))["conv6_interp"].shape == (1, 3, 23, 23)
    train = netspec.Net(parse_net(PSP_TRAIN), phase=netspec.TRAIN)
    x = randn((2, 3, 4, 4), seed=53)
    train.forward(data=x)
    conv = np.array(train.blobs["conv"].data)              # in place: the BN output
    assert_close(conv.mean(axis=(0, 2, 3)), np.zeros(2), atol=1e-5)
    w = np.array(train.params["conv"][0].data)[:, :, 0, 0]
    batch_mean = np.einsum("oc,nchw->nohw", w, x).mean(axis=(0, 2, 3)) + train.params["conv"][1].data
    assert_close(train.params["conv/bn"][2].data.reshape(-1), 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
    train.backward(conv=randn((2, 2, 4, 4), seed=54))
    assert np.abs(train.params["conv/bn"][0].diff).sum() > 0
