"""Vision layers against naive NumPy transcriptions of Caffe's loops and formulas."""
import itertools

import jax
import numpy as np
import pytest

from netspec.errors import NetspecError
from tests.layer_harness import check_layer_grads, make_layer, random_params, run_layer

jax.config.update("jax_default_matmul_precision", "highest")

RTOL, ATOL = 1e-5, 1e-5


def randn(*shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def forward(layer, bottoms, params=()):
    tops = jax.jit(lambda b, p: run_layer(layer, b, p))(list(bottoms), list(params))
    return [np.asarray(t) for t in tops]


# ---------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------

def conv_ref(x, w, b, stride, pad, dilation, group):
    """N-d Caffe convolution: sum over kernel taps of shifted, strided input slices."""
    n = x.ndim - 2
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out_sp = [(xp.shape[2 + i] - (dilation[i] * (w.shape[2 + i] - 1) + 1)) // stride[i] + 1
              for i in range(n)]
    cg, og = x.shape[1] // group, w.shape[0] // group
    y = np.zeros((x.shape[0], w.shape[0]) + tuple(out_sp))
    for tap in itertools.product(*[range(k) for k in w.shape[2:]]):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                      for t, d, o, s in zip(tap, dilation, out_sp, stride))
        patch = xp[(slice(None), slice(None)) + index]
        for g in range(group):
            wg = w[(slice(g * og, (g + 1) * og), slice(None)) + tap]  # (og, cg)
            y[:, g * og:(g + 1) * og] += np.einsum(
                "oc,nc...->no...", wg, patch[:, g * cg:(g + 1) * cg])
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n)
    return y


def deconv_ref(x, w, b, stride, pad, dilation, group, out_sp):
    """N-d Caffe deconvolution: scatter every input value times the kernel, then crop the pad."""
    n = x.ndim - 2
    cg, og = x.shape[1] // group, w.shape[1]
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, w.shape[2:])]
    full = np.zeros((x.shape[0], og * group) + tuple(
        (s_in - 1) * s + e for s_in, s, e in zip(x.shape[2:], stride, extent)))
    for tap in itertools.product(*[range(k) for k in w.shape[2:]]):
        index = tuple(slice(t * d, t * d + (s_in - 1) * s + 1, s)
                      for t, d, s_in, s in zip(tap, dilation, x.shape[2:], stride))
        for g in range(group):
            wg = w[(slice(g * cg, (g + 1) * cg), slice(None)) + tap]  # (cg, og)
            full[(slice(None), slice(g * og, (g + 1) * og)) + index] += np.einsum(
                "co,nc...->no...", wg, x[:, g * cg:(g + 1) * cg].astype(np.float64))
    if b is not None:
        full += b.reshape((1, -1) + (1,) * n)
    crop = tuple(slice(p, p + o) for p, o in zip(pad, out_sp))
    return full[(slice(None), slice(None)) + crop]


def caffe_pool_forward(x, method, kernel, stride, pad, out_hw):
    """Transcription of Caffe's PoolingLayer::Forward_cpu; returns (top, mask)."""
    n, c, height, width = x.shape
    top = np.zeros((n, c) + tuple(out_hw))
    mask = -np.ones((n, c) + tuple(out_hw), np.int64)
    for i, j, ph, pw in itertools.product(range(n), range(c), range(out_hw[0]), range(out_hw[1])):
        hstart, wstart = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
        if method == "MAX":
            hend, wend = min(hstart + kernel[0], height), min(wstart + kernel[1], width)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            best = -np.finfo(np.float32).max
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    if x[i, j, h, w] > best:
                        best, mask[i, j, ph, pw] = x[i, j, h, w], h * width + w
            top[i, j, ph, pw] = best
        else:
            hend = min(hstart + kernel[0], height + pad[0])
            wend = min(wstart + kernel[1], width + pad[1])
            size = (hend - hstart) * (wend - wstart)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            hend, wend = min(hend, height), min(wend, width)
            top[i, j, ph, pw] = x[i, j, hstart:hend, wstart:wend].astype(np.float64).sum() / size
    return top, mask


def caffe_max_pool_backward(top_diff, mask, bottom_shape):
    """Transcription of Caffe's MAX Backward_cpu: each top diff goes to its mask index."""
    n, c, height, width = bottom_shape
    diff = np.zeros((n, c, height * width))
    flat_top, flat_mask = top_diff.reshape(n, c, -1), mask.reshape(n, c, -1)
    for i, j, k in itertools.product(range(n), range(c), range(flat_top.shape[2])):
        diff[i, j, flat_mask[i, j, k]] += flat_top[i, j, k]
    return diff.reshape(bottom_shape)


def caffe_pooled_size(size, kernel, stride, pad, ceil_mode=True):
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_layer(params, shape, num_tops=1):
    return make_layer(f'type: "Pooling" pooling_param {{ {params} }}', [shape], num_tops=num_tops)


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------

CONV_CASES = [
    # (convolution_param text, bottom shape, stride, pad, dilation)
    ("num_output: 5 kernel_size: 3", (2, 3, 7, 9), (1, 1), (0, 0), (1, 1)),
    ("num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2", (2, 6, 9, 8), (2, 2), (1, 1),
     (1, 1)),
    ("num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 1 pad_h: 2 pad_w: 0",
     (1, 2, 8, 7), (3, 1), (2, 0), (1, 1)),
    ("num_output: 6 kernel_size: 3 kernel_size: 2 dilation: 2 pad: 2 pad: 1 stride: 1 stride: 2 "
     "group: 3 bias_term: false", (2, 3, 9, 11), (1, 2), (2, 1), (2, 2)),
    ("num_output: 2 kernel_size: 1", (3, 4, 5, 5), (1, 1), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("text, shape, stride, pad, dilation", CONV_CASES)
def test_convolution_forward_matches_reference(text, shape, stride, pad, dilation):
    layer = make_layer(f'type: "Convolution" convolution_param {{ {text} }}', [shape])
    x = randn(*shape)
    params = random_params(layer, seed=3)
    (y,) = forward(layer, [x], params)
    bias = params[1] if len(params) > 1 else None
    ref = conv_ref(x, params[0], bias, stride, pad, dilation, layer.group)
    assert layer.top_shapes()[0] == ref.shape == y.shape
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_convolution_param_shapes_and_default_fillers():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 '
                       'kernel_w: 2 group: 3 }', [(1, 9, 5, 5)])
    assert layer.param_shapes() == [(6, 3, 3, 2), (6,)]
    weight_filler, bias_filler = layer.param_fillers()
    assert (weight_filler.type, weight_filler.value) == ("constant", 0.0)
    assert (bias_filler.type, bias_filler.value) == ("constant", 0.0)
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
                       'bias_term: false weight_filler { type: "gaussian" std: 0.1 } }',
                       [(1, 4, 5, 5)])
    assert layer.param_shapes() == [(2, 4, 3, 3)]
    assert [f.type for f in layer.param_fillers()] == ["gaussian"]


@pytest.mark.parametrize("shape, kernel", [((2, 3, 11), "3"), ((1, 2, 5, 6, 4), "3 kernel_size: 2 "
                                                                               "kernel_size: 2")])
def test_convolution_1d_and_3d(shape, kernel):
    n = len(shape) - 2
    layer = make_layer(f'type: "Convolution" convolution_param {{ num_output: 4 kernel_size: '
                       f'{kernel} stride: 2 pad: 1 }}', [shape])
    x = randn(*shape, seed=1)
    params = random_params(layer, seed=2)
    (y,) = forward(layer, [x], params)
    ref = conv_ref(x, params[0], params[1], (2,) * n, (1,) * n, (1,) * n, 1)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_convolution_with_channel_axis_2():
    """axis: 2 treats axes 0 and 1 as batch axes."""
    layer = make_layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 2 '
                       'axis: 2 }', [(2, 3, 4, 5, 6)])
    x = randn(2, 3, 4, 5, 6, seed=4)
    params = random_params(layer, seed=5)
    (y,) = forward(layer, [x], params)
    ref = conv_ref(x.reshape(6, 4, 5, 6), params[0], params[1], (1, 1), (0, 0), (1, 1), 1)
    assert y.shape == (2, 3, 3, 4, 5) == layer.top_shapes()[0]
    np.testing.assert_allclose(y, ref.reshape(2, 3, 3, 4, 5), rtol=RTOL, atol=ATOL)


def test_convolution_shared_weights_over_two_bottoms():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
                       [(1, 2, 5, 5), (1, 2, 5, 5)], num_tops=2)
    a, b = randn(1, 2, 5, 5, seed=1), randn(1, 2, 5, 5, seed=2)
    params = random_params(layer)
    ya, yb = forward(layer, [a, b], params)
    for x, y in ((a, ya), (b, yb)):
        np.testing.assert_allclose(y, conv_ref(x, params[0], params[1], (1, 1), (0, 0), (1, 1), 1),
                                   rtol=RTOL, atol=ATOL)


def test_convolution_gradients():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                       'stride: 2 pad: 1 dilation: 1 group: 2 }', [(2, 4, 5, 4)])
    check_layer_grads(layer, [randn(2, 4, 5, 4)], random_params(layer, seed=1))
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 '
                       'dilation: 2 }', [(1, 2, 5, 5)])
    check_layer_grads(layer, [randn(1, 2, 5, 5)], random_params(layer, seed=1))


@pytest.mark.parametrize("text, shape, words", [
    ("num_output: 4 kernel_size: 3 group: 2", (1, 3, 5, 5), ["group 2", "(1, 3, 5, 5)"]),
    ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 5, 5), ["group 2", "num_output (3)"]),
    ("num_output: 2 kernel_size: 7", (1, 2, 5, 9), ["(1, 2, 5, 9)", "[7, 7]"]),
    ("num_output: 2 kernel_size: 3 dilation: 3", (1, 2, 6, 6), ["(1, 2, 6, 6)"]),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 2, 6, 6), ["kernel_h"]),
    ("num_output: 2 kernel_h: 3", (1, 2, 6, 6), ["kernel_w"]),
    ("num_output: 2", (1, 2, 6, 6), ["kernel_size"]),
    ("kernel_size: 2", (1, 2, 6, 6), ["num_output"]),
    ("num_output: 2 kernel_size: 2 kernel_size: 2 kernel_size: 2", (1, 2, 6, 6), ["kernel_size"]),
    ("num_output: 2 kernel_h: 2 kernel_w: 2", (1, 2, 6, 6, 6), ["kernel_h"]),
    ("num_output: 2 kernel_size: 2 stride: 0", (1, 2, 6, 6), ["stride"]),
])
def test_convolution_errors_name_layer_and_shapes(text, shape, words):
    with pytest.raises(NetspecError) as info:
        make_layer(f'name: "conv9" type: "Convolution" convolution_param {{ {text} }}', [shape])
    message = str(info.value)
    assert '"conv9"' in message and "\n" not in message
    for word in words:
        assert word in message


# ---------------------------------------------------------------------------
# Deconvolution
# ---------------------------------------------------------------------------

DECONV_CASES = [
    # (convolution_param text, bottom shape, stride, pad, dilation)
    ("num_output: 3 kernel_size: 4 stride: 2 bias_term: false", (1, 2, 5, 7), (2, 2), (0, 0), (1, 1)),
    ("num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2", (2, 6, 4, 5), (2, 2), (1, 1), (1, 1)),
    ("num_output: 2 kernel_size: 16 stride: 8 pad: 3", (1, 3, 3, 4), (8, 8), (3, 3), (1, 1)),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 0",
     (1, 3, 5, 4), (1, 3), (1, 0), (1, 1)),
    ("num_output: 3 kernel_size: 3 stride: 2 dilation: 2 pad: 2 group: 3", (2, 3, 4, 3), (2, 2),
     (2, 2), (2, 2)),
    ("num_output: 2 kernel_size: 2 stride: 3", (1, 2, 3, 4), (3, 3), (0, 0), (1, 1)),
    ("num_output: 2 kernel_size: 3 pad: 2", (1, 2, 5, 6), (1, 1), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("text, shape, stride, pad, dilation", DECONV_CASES)
def test_deconvolution_forward_matches_reference(text, shape, stride, pad, dilation):
    layer = make_layer(f'type: "Deconvolution" convolution_param {{ {text} }}', [shape])
    x = randn(*shape)
    params = random_params(layer, seed=3)
    (y,) = forward(layer, [x], params)
    top = layer.top_shapes()[0]
    expected = tuple(s * (i - 1) + d * (k - 1) + 1 - 2 * p for i, s, d, k, p in
                     zip(shape[2:], stride, dilation, params[0].shape[2:], pad))
    assert top == (shape[0], layer.num_output) + expected == y.shape
    bias = params[1] if len(params) > 1 else None
    ref = deconv_ref(x, params[0], bias, stride, pad, dilation, layer.group, expected)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_deconvolution_is_the_transpose_of_convolution():
    """<deconv(x), y> == <x, conv(y)> with the same weight blob and geometry (no bias)."""
    geometry = "kernel_size: 4 stride: 2 pad: 1 group: 2 bias_term: false"
    deconv = make_layer(f'type: "Deconvolution" convolution_param {{ num_output: 6 {geometry} }}',
                        [(1, 4, 5, 5)])
    conv = make_layer(f'type: "Convolution" convolution_param {{ num_output: 4 {geometry} }}',
                      [(1, 6, 10, 10)])
    weight = random_params(deconv)[0]
    assert deconv.param_shapes() == [(4, 3, 4, 4)] == conv.param_shapes()
    x, y = randn(1, 4, 5, 5, seed=1), randn(1, 6, 10, 10, seed=2)
    lhs = np.sum(forward(deconv, [x], [weight])[0].astype(np.float64) * y)
    rhs = np.sum(x * forward(conv, [y], [weight])[0].astype(np.float64))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_deconvolution_1d_and_3d():
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 '
                       'stride: 2 pad: 1 }', [(2, 3, 5)])
    x, params = randn(2, 3, 5), random_params(layer)
    np.testing.assert_allclose(forward(layer, [x], params)[0],
                               deconv_ref(x, params[0], params[1], (2,), (1,), (1,), 1, (9,)),
                               rtol=RTOL, atol=ATOL)
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 '
                       'kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 stride: 3 }',
                       [(1, 2, 3, 4, 2)])
    x, params = randn(1, 2, 3, 4, 2), random_params(layer)
    np.testing.assert_allclose(forward(layer, [x], params)[0],
                               deconv_ref(x, params[0], params[1], (2, 1, 3), (0, 0, 0), (1, 1, 1),
                                          1, (6, 6, 5)), rtol=RTOL, atol=ATOL)


def test_deconvolution_gradients():
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 '
                       'stride: 2 pad: 1 group: 2 }', [(1, 4, 3, 4)])
    check_layer_grads(layer, [randn(1, 4, 3, 4)], random_params(layer, seed=1))
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 '
                       'stride: 3 dilation: 2 }', [(1, 2, 3, 2)])
    check_layer_grads(layer, [randn(1, 2, 3, 2)], random_params(layer, seed=1))


def test_deconvolution_errors():
    with pytest.raises(NetspecError, match=r'"up".*group 2.*\(1, 3, 4, 4\)'):
        make_layer('name: "up" type: "Deconvolution" convolution_param { num_output: 4 '
                   'kernel_size: 2 group: 2 }', [(1, 3, 4, 4)])
    with pytest.raises(NetspecError, match=r'"up".*\(1, 3, 2, 2\)'):
        make_layer('name: "up" type: "Deconvolution" convolution_param { num_output: 4 '
                   'kernel_size: 2 pad: 2 }', [(1, 3, 2, 2)])


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

POOL_CASES = [
    # (pooling_param text, bottom shape, kernel, stride, pad, ceil)
    ("kernel_size: 2 stride: 2", (2, 3, 7, 9), (2, 2), (2, 2), (0, 0), True),
    ("kernel_size: 3 stride: 2", (1, 2, 8, 7), (3, 3), (2, 2), (0, 0), True),
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 8, 9), (3, 3), (2, 2), (1, 1), True),
    ("kernel_size: 3 stride: 2 pad: 2", (1, 2, 6, 5), (3, 3), (2, 2), (2, 2), True),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1", (2, 2, 9, 8), (3, 2),
     (2, 3), (1, 1), True),
    ("kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (1, 2, 8, 9), (3, 3), (2, 2), (1, 1),
     False),
    ("kernel_size: 2 stride: 3 round_mode: FLOOR", (1, 3, 8, 10), (2, 2), (3, 3), (0, 0), False),
    ("kernel_size: 4 stride: 1 pad: 3", (1, 1, 3, 4), (4, 4), (1, 1), (3, 3), True),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("text, shape, kernel, stride, pad, ceil", POOL_CASES)
def test_pooling_forward_matches_caffe_loops(method, text, shape, kernel, stride, pad, ceil):
    layer = pool_layer(f"pool: {method} {text}", shape)
    out_hw = tuple(caffe_pooled_size(s, k, st, p, ceil) for s, k, st, p in
                   zip(shape[2:], kernel, stride, pad))
    assert layer.top_shapes() == [shape[:2] + out_hw]
    x = randn(*shape, seed=7)
    (y,) = forward(layer, [x])
    ref, _ = caffe_pool_forward(x, method, kernel, stride, pad, out_hw)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_pooling_drops_window_starting_in_padding():
    # in 4, kernel 3, stride 2, pad 2: ceil((4 + 4 - 3) / 2) + 1 = 4 windows, but the last
    # would start at 3*2 - 2 = 4, in the padding (3*2 >= 4 + 2), so Caffe keeps 3.
    assert caffe_pooled_size(4, 3, 2, 2) == 3
    layer = pool_layer("pool: MAX kernel_size: 3 stride: 2 pad: 2", (1, 1, 4, 6))
    assert layer.top_shapes() == [(1, 1, 3, 4)]
    layer = pool_layer("pool: AVE kernel_size: 3 stride: 2 pad: 2 round_mode: FLOOR", (1, 1, 4, 6))
    assert layer.top_shapes() == [(1, 1, 3, 4)]


def test_pooling_fcn_shapes():
    """FCN at 500x500: conv1 pads by 100 (698), then pool1..pool5 = 349, 175, 88, 44, 22."""
    size, sizes = 698, []
    for _ in range(5):
        layer = pool_layer("pool: MAX kernel_size: 2 stride: 2", (1, 1, size, size))
        size = layer.top_shapes()[0][2]
        sizes.append(size)
    assert sizes == [349, 175, 88, 44, 22]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    x = randn(2, 3, 5, 7, seed=2)
    layer = pool_layer(f"pool: {method} global_pooling: true", x.shape)
    (y,) = forward(layer, [x])
    ref = x.max(axis=(2, 3)) if method == "MAX" else x.astype(np.float64).mean(axis=(2, 3))
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y[:, :, 0, 0], ref, rtol=RTOL, atol=ATOL)


def max_pool_gradient(layer, x, top_diff):
    """JAX's gradient of sum(top * top_diff) for a single-top pooling layer."""
    return np.asarray(jax.jit(jax.grad(lambda b: (run_layer(layer, [b])[0] * top_diff).sum()))(x))


@pytest.mark.parametrize("text, shape, kernel, stride, pad, ceil", POOL_CASES)
def test_max_pooling_ties_gradient_goes_to_first_maximum(text, shape, kernel, stride, pad, ceil):
    """Constant regions and ReLU zeros tie everywhere; Caffe credits the first maximum only."""
    x = randn(*shape, seed=3)
    x = np.maximum(x, 0)  # zeros from a ReLU
    x[:, :, :shape[2] // 2, :shape[3] // 2] = 0.5  # a constant block
    x[0, 0] = 0.0  # an all-zero channel
    layer = pool_layer(f"pool: MAX {text}", shape)
    out_hw = layer.top_shapes()[0][2:]
    top, mask = caffe_pool_forward(x, "MAX", kernel, stride, pad, out_hw)
    top_diff = randn(*top.shape, seed=4)
    expected = caffe_max_pool_backward(top_diff, mask, shape)
    np.testing.assert_allclose(forward(layer, [x])[0], top, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(max_pool_gradient(layer, x, top_diff), expected, rtol=RTOL,
                               atol=ATOL)


def test_max_pooling_mask_top():
    x = np.maximum(randn(2, 2, 7, 6, seed=5), 0)
    layer = pool_layer("pool: MAX kernel_size: 3 stride: 2 pad: 1", x.shape, num_tops=2)
    assert layer.top_shapes() == [(2, 2, 4, 4)] * 2
    y, mask = forward(layer, [x])
    top, ref_mask = caffe_pool_forward(x, "MAX", (3, 3), (2, 2), (1, 1), (4, 4))
    np.testing.assert_allclose(y, top, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(mask, ref_mask)
    # the gradient through the first top still follows Caffe's mask
    top_diff = randn(*top.shape, seed=6)
    np.testing.assert_allclose(max_pool_gradient(layer, x, top_diff),
                               caffe_max_pool_backward(top_diff, ref_mask, x.shape), rtol=RTOL)


def test_pooling_gradients_finite_differences():
    layer = pool_layer("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 4))
    check_layer_grads(layer, [randn(1, 2, 5, 4)])
    layer = pool_layer("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 4))
    check_layer_grads(layer, [randn(1, 2, 5, 4)])  # distinct values: no ties


@pytest.mark.parametrize("text, shape, num_tops, words", [
    ("pool: STOCHASTIC kernel_size: 2", (1, 1, 4, 4), 1, ["STOCHASTIC", "not supported"]),
    ("pool: AVE kernel_size: 2", (1, 1, 4, 4), 2, ["mask"]),
    ("pool: MAX kernel_size: 2 pad: 2", (1, 1, 4, 4), 1, ["pad (2, 2)", "kernel (2, 2)"]),
    ("pool: MAX global_pooling: true kernel_size: 2", (1, 1, 4, 4), 1, ["global_pooling"]),
    ("pool: MAX global_pooling: true stride: 2", (1, 1, 4, 4), 1, ["stride"]),
    ("pool: MAX", (1, 1, 4, 4), 1, ["kernel_size"]),
    ("pool: MAX kernel_h: 2", (1, 1, 4, 4), 1, ["kernel_w"]),
    ("pool: MAX kernel_size: 2", (1, 4, 4), 1, ["(1, 4, 4)"]),
    ("pool: MAX kernel_size: 5 round_mode: FLOOR", (1, 1, 3, 3), 1, ["(1, 1, 3, 3)"]),
])
def test_pooling_errors(text, shape, num_tops, words):
    with pytest.raises(NetspecError) as info:
        make_layer(f'name: "pool7" type: "Pooling" pooling_param {{ {text} }}', [shape],
                   num_tops=num_tops)
    message = str(info.value)
    assert '"pool7"' in message
    for word in words:
        assert word in message


# ---------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------

def lrn_ref(x, size, alpha, beta, k, across):
    x = x.astype(np.float64)
    n, c, h, w = x.shape
    half = (size - 1) // 2
    scale = np.empty_like(x)
    if across:
        for ch in range(c):
            lo, hi = max(ch - half, 0), min(ch + half + 1, c)
            scale[:, ch] = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
    else:
        for i, j in itertools.product(range(h), range(w)):
            window = x[:, :, max(i - half, 0):i + half + 1, max(j - half, 0):j + half + 1]
            scale[:, :, i, j] = 1 + alpha * (window ** 2).sum(axis=(2, 3)) / size ** 2
    return x * scale ** -beta


@pytest.mark.parametrize("text, size, alpha, beta, k, across", [
    ("", 5, 1.0, 0.75, 1.0, True),
    ("local_size: 3 alpha: 0.3 beta: 0.6 k: 2", 3, 0.3, 0.6, 2.0, True),
    ("local_size: 7 alpha: 0.5", 7, 0.5, 0.75, 1.0, True),
    ("norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.8 beta: 0.9 k: 5", 3, 0.8, 0.9, 1.0, False),
    ("norm_region: WITHIN_CHANNEL local_size: 5 alpha: 2", 5, 2.0, 0.75, 1.0, False),
])
def test_lrn_forward_matches_reference(text, size, alpha, beta, k, across):
    x = randn(2, 6, 5, 7, seed=8)
    layer = make_layer(f'type: "LRN" lrn_param {{ {text} }}', [x.shape])
    (y,) = forward(layer, [x])
    np.testing.assert_allclose(y, lrn_ref(x, size, alpha, beta, k, across), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_gradients(region):
    layer = make_layer(f'type: "LRN" lrn_param {{ norm_region: {region} local_size: 3 alpha: 0.7 '
                       'beta: 0.8 k: 1.5 }', [(1, 4, 3, 4)])
    check_layer_grads(layer, [randn(1, 4, 3, 4)])


def test_lrn_even_local_size_is_an_error():
    with pytest.raises(NetspecError, match=r'"norm1".*odd.*4'):
        make_layer('name: "norm1" type: "LRN" lrn_param { local_size: 4 }', [(1, 6, 5, 5)])


# ---------------------------------------------------------------------------
# InnerProduct
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, shape, axis", [
    ("num_output: 5", (3, 2, 4, 3), 1),
    ("num_output: 4 axis: 2", (2, 3, 4, 5), 2),
    ("num_output: 3 axis: -1 transpose: true", (2, 3, 7), 2),
    ("num_output: 6 bias_term: false transpose: true", (4, 9), 1),
])
def test_inner_product_forward(text, shape, axis):
    layer = make_layer(f'type: "InnerProduct" inner_product_param {{ {text} }}', [shape])
    x = randn(*shape, seed=9)
    params = random_params(layer, seed=10)
    k = int(np.prod(shape[axis:]))
    weight = params[0] if layer.transpose else params[0].T  # (K, N)
    assert weight.shape == (k, layer.num_output)
    ref = x.reshape(int(np.prod(shape[:axis])), k).astype(np.float64) @ weight
    if len(params) > 1:
        ref += params[1]
    (y,) = forward(layer, [x], params)
    assert y.shape == tuple(shape[:axis]) + (layer.num_output,) == layer.top_shapes()[0]
    np.testing.assert_allclose(y, ref.reshape(y.shape), rtol=RTOL, atol=ATOL)


def test_inner_product_flattens_in_chw_order_like_a_conv():
    """An FC weight copied flat into a full-size conv kernel gives the same numbers (FCN's trick)."""
    x = randn(2, 3, 4, 5, seed=11)
    fc = make_layer('type: "InnerProduct" inner_product_param { num_output: 6 }', [x.shape])
    conv = make_layer('type: "Convolution" convolution_param { num_output: 6 kernel_h: 4 '
                      'kernel_w: 5 }', [x.shape])
    weight, bias = random_params(fc, seed=12)
    (y_fc,) = forward(fc, [x], [weight, bias])
    (y_conv,) = forward(conv, [x], [weight.reshape(6, 3, 4, 5), bias])
    np.testing.assert_allclose(y_conv[:, :, 0, 0], y_fc, rtol=RTOL, atol=ATOL)


def test_inner_product_gradients_and_fillers():
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 3 '
                       'bias_filler { type: "constant" value: 0.2 } }', [(2, 2, 2, 2)])
    assert layer.param_shapes() == [(3, 8), (3,)]
    assert layer.param_fillers()[0].type == "constant" and layer.param_fillers()[1].value == np.float32(0.2)
    check_layer_grads(layer, [randn(2, 2, 2, 2)], random_params(layer, seed=1))
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 transpose: true '
                       'axis: 2 }', [(2, 2, 3)])
    check_layer_grads(layer, [randn(2, 2, 3)], random_params(layer, seed=1))


# ---------------------------------------------------------------------------
# Crop
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, big, ref, offsets", [
    ("offset: 19", (1, 3, 40, 41), (1, 5, 20, 21), (0, 0, 19, 19)),  # FCN-32s style
    ("", (2, 3, 7, 8), (1, 1, 4, 5), (0, 0, 0, 0)),
    ("axis: 1 offset: 1 offset: 2 offset: 3", (2, 5, 7, 8), (1, 3, 4, 5), (0, 1, 2, 3)),
    ("axis: -1 offset: 2", (2, 3, 6, 9), (1, 1, 1, 4), (0, 0, 0, 2)),
    ("axis: 0 offset: 1", (3, 4, 5), (2, 2, 2), (1, 1, 1)),
    ("axis: 1 offset: 1", (3, 4), (2, 2), (0, 1)),
])
def test_crop_forward(text, big, ref, offsets):
    layer = make_layer(f'type: "Crop" crop_param {{ {text} }}', [big, ref])
    x = randn(*big, seed=12)
    (y,) = forward(layer, [x, np.zeros(ref, np.float32)])
    axis = layer.axis
    expected_shape = tuple(big[:axis]) + tuple(ref[axis:])
    index = tuple(slice(o, o + s) for o, s in zip(offsets, expected_shape))
    assert y.shape == expected_shape == layer.top_shapes()[0]
    np.testing.assert_array_equal(y, x[index])


def test_crop_gradient_goes_to_first_bottom_only():
    layer = make_layer('type: "Crop" crop_param { offset: 1 offset: 2 }', [(1, 2, 5, 6), (1, 1, 3, 3)])
    x, reference = randn(1, 2, 5, 6), randn(1, 1, 3, 3, seed=2)
    top_diff = randn(1, 2, 3, 3, seed=3)
    gx, gr = jax.grad(lambda a, b: (run_layer(layer, [a, b])[0] * top_diff).sum(),
                      argnums=(0, 1))(x, reference)
    expected = np.zeros_like(x)
    expected[:, :, 1:4, 2:5] = top_diff
    np.testing.assert_array_equal(np.asarray(gx), expected)
    np.testing.assert_array_equal(np.asarray(gr), 0)


@pytest.mark.parametrize("text, big, ref, words", [
    ("offset: 3", (1, 2, 6, 6), (1, 1, 4, 4), ["(1, 2, 6, 6)", "(1, 1, 4, 4)"]),
    ("", (1, 2, 3, 6), (1, 1, 4, 4), ["(1, 2, 3, 6)", "(1, 1, 4, 4)"]),
    ("offset: 1 offset: 1 offset: 1", (1, 2, 6, 6), (1, 1, 4, 4), ["offset", "3 values"]),
    ("", (1, 2, 6, 6), (1, 4, 4), ["(1, 2, 6, 6)", "(1, 4, 4)"]),
])
def test_crop_errors(text, big, ref, words):
    with pytest.raises(NetspecError) as info:
        make_layer(f'name: "score_crop" type: "Crop" crop_param {{ {text} }}', [big, ref])
    message = str(info.value)
    assert '"score_crop"' in message
    for word in words:
        assert word in message


# ---------------------------------------------------------------------------
# Embed
# ---------------------------------------------------------------------------

def test_embed_forward_gradient_and_clamping():
    layer = make_layer('type: "Embed" embed_param { num_output: 3 input_dim: 5 }', [(2, 4)])
    assert layer.param_shapes() == [(5, 3), (3,)]
    assert layer.top_shapes() == [(2, 4, 3)]
    weight, bias = random_params(layer, seed=13)
    index = np.array([[0, 4, 2, 2], [1, 3, 0, 4]], np.float32)
    (y,) = forward(layer, [index], [weight, bias])
    np.testing.assert_allclose(y, weight[index.astype(int)] + bias, rtol=RTOL)
    # gradient wrt W accumulates per row (index 2 and 0 and 4 appear twice), none to the bottom
    top_diff = randn(2, 4, 3, seed=14)
    gx, gw, gb = jax.grad(lambda x, w, b: (run_layer(layer, [x], [w, b])[0] * top_diff).sum(),
                          argnums=(0, 1, 2))(index, weight, bias)
    expected = np.zeros_like(weight)
    for i, row in enumerate(index.astype(int).ravel()):
        expected[row] += top_diff.reshape(-1, 3)[i]
    np.testing.assert_allclose(np.asarray(gw), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gb), top_diff.sum(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(gx), 0)
    # out-of-range indices are clamped into [0, input_dim)
    (y,) = forward(layer, [np.array([[-3, 9, 4, 0]], np.float32)], [weight, bias])
    np.testing.assert_allclose(y[0], weight[[0, 4, 4, 0]] + bias, rtol=RTOL)


def test_embed_without_bias_and_errors():
    layer = make_layer('type: "Embed" embed_param { num_output: 2 input_dim: 3 bias_term: false '
                       'weight_filler { type: "uniform" } }', [(4,)])
    assert layer.param_shapes() == [(3, 2)]
    assert layer.param_fillers()[0].type == "uniform"
    weight = random_params(layer)[0]
    (y,) = forward(layer, [np.array([2, 0, 1, 2], np.float32)], [weight])
    np.testing.assert_allclose(y, weight[[2, 0, 1, 2]])
    with pytest.raises(NetspecError, match='"emb"'):
        make_layer('name: "emb" type: "Embed" embed_param { num_output: 2 }', [(4,)])
