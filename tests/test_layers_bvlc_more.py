"""MVN, SPP, Filter, BatchReindex, Parameter and Im2col against naive NumPy references."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import netspec as caffe
from netspec.errors import NetspecError
from netspec.layers import layer_class
from netspec.prototxt import parse_net
from netspec.proto import caffe_pb2
from google.protobuf import text_format
from tests.layer_harness import check_layer_grads, make_layer, run_layer

jax.config.update("jax_default_matmul_precision", "highest")


def randn(shape, seed=0, scale=1.0):
    return np.asarray(scale * np.random.RandomState(seed).randn(*shape), np.float32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def bottom_grads(layer, bottoms, top_diffs, params=()):
    def objective(bs):
        tops = run_layer(layer, bs, params)
        return sum(jnp.sum(t * d) for t, d in zip(tops, top_diffs))
    return [np.asarray(g) for g in jax.grad(objective)([jnp.asarray(b) for b in bottoms])]


# -- MVN ------------------------------------------------------------------------------

def mvn_groups(shape4, across):
    """Index lists of the normalization groups of a 4-axis blob."""
    n, c, h, w = shape4
    if across:
        return [[(i, cc, y, x) for cc in range(c) for y in range(h) for x in range(w)]
                for i in range(n)]
    return [[(i, cc, y, x) for y in range(h) for x in range(w)] for i in range(n)
            for cc in range(c)]


def mvn_reference(x, across, normalize, eps):
    x = np.float64(x)
    y = np.zeros(x.shape)
    stds = {}
    for group in mvn_groups(x.shape, across):
        values = np.array([x[i] for i in group])
        mean = values.sum() / len(group)
        std = math.sqrt(((values - mean) ** 2).sum() / len(group)) + eps   # eps on the std
        for i in group:
            y[i] = (x[i] - mean) / std if normalize else x[i] - mean
        stds[group[0]] = std
    return y, stds


def mvn_caffe_backward(y, dy, across, normalize, stds):
    """MVNLayer::Backward_cpu as sums over each group."""
    dx = np.zeros(y.shape)
    for group in mvn_groups(y.shape, across):
        m = len(group)
        sum_dy = sum(dy[i] for i in group)
        if normalize:
            sum_ydy = sum(y[i] * dy[i] for i in group)
            for i in group:
                dx[i] = (dy[i] - (y[i] * sum_ydy + sum_dy) / m) / stds[group[0]]
        else:
            for i in group:
                dx[i] = dy[i] - sum_dy / m
    return dx


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_mvn_forward_and_caffe_backward(across, normalize):
    shape = (2, 3, 4, 5)
    text = (f'type: "MVN" mvn_param {{ across_channels: {str(across).lower()} '
            f'normalize_variance: {str(normalize).lower()} eps: 0.25 }}')
    layer = make_layer(text, [shape])
    x = randn(shape, 1, 2.0) + 1.0
    (y,) = run_layer(layer, [x])
    ref, stds = mvn_reference(x, across, normalize, 0.25)
    assert_close(y, ref)
    dy = randn(shape, 2)
    (dx,) = bottom_grads(layer, [x], [dy])
    assert_close(dx, mvn_caffe_backward(ref, np.float64(dy), across, normalize, stds))


def test_mvn_caffe_backward_is_not_the_exact_derivative_with_large_eps():
    layer = make_layer('type: "MVN" mvn_param { eps: 0.5 }', [(1, 1, 2, 3)])
    x = randn((1, 1, 2, 3), 3)
    dy = randn((1, 1, 2, 3), 4)
    (dx,) = bottom_grads(layer, [x], [dy])
    exact = jax.grad(lambda v: jnp.sum(
        (v - v.mean()) / (jnp.sqrt(((v - v.mean()) ** 2).mean()) + 0.5) * dy))(jnp.asarray(x))
    assert not np.allclose(dx, np.asarray(exact), rtol=1e-3)


@pytest.mark.parametrize("text", ['type: "MVN"', 'type: "MVN" mvn_param { across_channels: true }',
                                  'type: "MVN" mvn_param { normalize_variance: false }'])
def test_mvn_gradient_with_default_eps(text):
    layer = make_layer(text, [(2, 2, 2, 3)])
    check_layer_grads(layer, [randn((2, 2, 2, 3), 5)], rtol=1e-4, atol=1e-6)


def test_mvn_top_is_four_axis():
    layer = make_layer('type: "MVN" mvn_param { across_channels: true }', [(3, 5)])
    assert layer.top_shapes() == [(3, 5, 1, 1)]
    x = randn((3, 5), 6)
    (y,) = run_layer(layer, [x])
    ref, _ = mvn_reference(x.reshape(3, 5, 1, 1), True, True, 1e-9)
    assert_close(y, ref)
    with pytest.raises(NetspecError, match="at most 4 axes"):
        make_layer('type: "MVN"', [(1, 2, 3, 4, 5)])


# -- SPP ------------------------------------------------------------------------------

def spp_reference(x, height, method):
    """Explicit pyramid loops with Caffe's per-level geometry and Pooling arithmetic."""
    x = np.float64(x)
    n, c, H, W = x.shape
    levels = []
    for level in range(height):
        bins = 2 ** level
        kh, kw = -(-H // bins), -(-W // bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        sizes = []
        for size, k, p in ((H, kh, ph), (W, kw, pw)):
            out = int(math.ceil((size + 2 * p - k) / k)) + 1
            if (ph or pw) and (out - 1) * k >= size + p:
                out -= 1
            sizes.append(out)
        out = np.zeros((n, c, sizes[0], sizes[1]))
        for i, ch, oy, ox in itertools.product(range(n), range(c), range(sizes[0]),
                                               range(sizes[1])):
            y0, x0 = oy * kh - ph, ox * kw - pw
            if method == "MAX":
                y1, x1 = min(y0 + kh, H), min(x0 + kw, W)
                y0, x0 = max(y0, 0), max(x0, 0)
                out[i, ch, oy, ox] = x[i, ch, y0:y1, x0:x1].max()
            else:
                y1, x1 = min(y0 + kh, H + ph), min(x0 + kw, W + pw)
                pool = (y1 - y0) * (x1 - x0)
                y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
                out[i, ch, oy, ox] = x[i, ch, y0:y1, x0:x1].sum() / pool
        levels.append(out)
    if height == 1:
        return levels[0]
    return np.concatenate([lv.reshape(n, -1) for lv in levels], axis=1)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("hw,height", [((7, 6), 3), ((13, 7), 3), ((6, 9), 2), ((10, 10), 3), ((5, 4), 1)])
def test_spp_forward(method, hw, height):
    shape = (2, 3) + hw
    layer = make_layer(f'type: "SPP" spp_param {{ pyramid_height: {height} pool: {method} }}',
                       [shape])
    x = randn(shape, 7)
    (y,) = run_layer(layer, [x])
    ref = spp_reference(x, height, method)
    assert layer.top_shapes() == [ref.shape]
    assert_close(y, ref)


def test_spp_output_order_and_size():
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 3 }', [(1, 2, 8, 8)])
    assert layer.top_shapes() == [(1, 2 * (1 + 4 + 16))]
    x = np.arange(128, dtype=np.float32).reshape(1, 2, 8, 8)
    (y,) = run_layer(layer, [x])
    y = np.asarray(y)[0]
    # level 0: per-channel maxima; level 1: channel 0's four quadrants first
    assert list(y[:2]) == [63, 127]
    assert list(y[2:6]) == [27, 31, 59, 63]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_spp_gradient(method):
    layer = make_layer(f'type: "SPP" spp_param {{ pyramid_height: 2 pool: {method} }}',
                       [(1, 2, 5, 3)])
    x = np.random.RandomState(8).permutation(30).reshape(1, 2, 5, 3).astype(np.float32) * 0.1
    check_layer_grads(layer, [x], rtol=1e-4, atol=1e-6)


def test_spp_errors():
    with pytest.raises(NetspecError, match="pyramid level 2"):
        make_layer('type: "SPP" spp_param { pyramid_height: 3 }', [(1, 1, 3, 8)])
    with pytest.raises(NetspecError, match="pyramid_height"):
        make_layer('type: "SPP"', [(1, 1, 3, 8)])
    with pytest.raises(NetspecError, match="STOCHASTIC"):
        make_layer('type: "SPP" spp_param { pyramid_height: 1 pool: STOCHASTIC }', [(1, 1, 3, 8)])


# -- Filter ---------------------------------------------------------------------------

def make_filter(shapes, selected_count, num_tops):
    lp = text_format.Parse('name: "f" type: "Filter"', caffe_pb2.LayerParameter())
    lp.bottom.extend(f"b{i}" for i in range(len(shapes)))
    lp.top.extend(f"t{i}" for i in range(num_tops))
    return layer_class("Filter")(lp, shapes, caffe.TEST, selected_count=selected_count)


def test_filter_forward_and_caffe_backward():
    shapes = [(5, 2, 3), (5, 4), (5, 1, 1)]
    selector = np.array([1, 0, 2.5, 0, -1], np.float32).reshape(5, 1, 1)
    layer = make_filter(shapes, 3, 2)
    assert layer.top_shapes() == [(3, 2, 3), (3, 4)]
    a, b = randn(shapes[0], 9), randn(shapes[1], 10)
    top_a, top_b = run_layer(layer, [a, b, selector])
    kept = [n for n in range(5) if selector[n, 0, 0] != 0]
    np.testing.assert_array_equal(top_a, a[kept])
    np.testing.assert_array_equal(top_b, b[kept])
    da, db = randn((3, 2, 3), 11), randn((3, 4), 12)
    grads = bottom_grads(layer, [a, b, selector], [da, db])
    for grad, diff, shape in zip(grads, (da, db), shapes):   # FilterLayer::Backward_cpu
        expected = np.zeros(shape, np.float32)
        forwarded = 0
        for n in range(shape[0]):
            if forwarded < len(kept) and kept[forwarded] == n:
                expected[n] = diff[forwarded]
                forwarded += 1
        np.testing.assert_array_equal(grad, expected)
    assert np.all(grads[2] == 0)
    check_layer_grads(layer, [a, b, selector], wrt_bottoms=[0, 1])


def test_filter_needs_its_count():
    with pytest.raises(NetspecError, match="data layer or a net input"):
        make_filter([(4, 2), (4,)], None, 1)
    with pytest.raises(NetspecError, match="size 1"):
        make_filter([(4, 2), (4, 2)], 2, 1)
    with pytest.raises(NetspecError, match="first dimension"):
        make_filter([(3, 2), (4,)], 2, 1)
    with pytest.raises(NetspecError, match="one top per filtered bottom"):
        make_filter([(4, 2), (4,)], 2, 2)
    empty = make_filter([(4, 2), (4,)], 0, 1)
    (top,) = run_layer(empty, [randn((4, 2)), np.zeros(4, np.float32)])
    assert top.shape == (0, 2)


# -- BatchReindex -----------------------------------------------------------------------

def test_batch_reindex_forward_and_accumulating_backward():
    layer = make_layer('type: "BatchReindex"', [(3, 2, 2), (5,)])
    assert layer.top_shapes() == [(5, 2, 2)]
    x = randn((3, 2, 2), 13)
    index = np.array([2, 0, 2, 1.7, 2], np.float32)            # 1.7 -> 1 (C++ cast)
    (y,) = run_layer(layer, [x, index])
    np.testing.assert_array_equal(y, x[[2, 0, 2, 1, 2]])
    dy = randn((5, 2, 2), 14)
    gx, gi = bottom_grads(layer, [x, index], [dy])
    expected = np.zeros((3, 2, 2))
    for n, k in enumerate(index.astype(int)):                  # Backward_cpu's loop
        expected[k] += dy[n]
    assert_close(gx, expected, rtol=1e-6, atol=1e-6)
    assert np.all(gi == 0)
    check_layer_grads(layer, [x, index], wrt_bottoms=[0])
    with pytest.raises(NetspecError, match="exactly 1 axis"):
        make_layer('type: "BatchReindex"', [(3, 2), (5, 1)])


# -- Parameter --------------------------------------------------------------------------

def test_parameter_layer_in_a_net():
    net = caffe.Net(parse_net("""
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "p" type: "Parameter" top: "p" param { lr_mult: 3 }
                parameter_param { shape { dim: 2 dim: 3 } } }
        layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "p" top: "y" }
    """), caffe.TEST)
    assert [b.shape for b in net.params["p"]] == [(2, 3)]
    assert np.all(net.params["p"][0].data == 0)
    assert net.graph.lr_mults[("p", 0)] == 3.0
    value = randn((2, 3), 15)
    net.params["p"][0].data[...] = value
    x = randn((2, 3), 16)
    assert_close(net.forward(x=x)["y"], np.float64(x) + value)
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 4 } }', [])
    check_layer_grads(layer, [], [randn((4,), 17)])


# -- Im2col ---------------------------------------------------------------------------

def im2col_reference(x, axis, kernel, stride, pad, dilation):
    """Column channel c * prod(K) + kernel offset (row-major); zeros in the padding."""
    lead, channels, spatial = x.shape[:axis], x.shape[axis], x.shape[axis + 1:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1
           for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation)]
    offsets = list(itertools.product(*[range(k) for k in kernel]))
    y = np.zeros(lead + (channels * len(offsets),) + tuple(out), x.dtype)
    for li in itertools.product(*[range(d) for d in lead]):
        for c in range(channels):
            for ki, koff in enumerate(offsets):
                for o in itertools.product(*[range(d) for d in out]):
                    src = [oo * st - p + kk * d for oo, st, p, kk, d in
                           zip(o, stride, pad, koff, dilation)]
                    if all(0 <= s < size for s, size in zip(src, spatial)):
                        y[li + (c * len(offsets) + ki,) + o] = x[li + (c,) + tuple(src)]
    return y


IM2COL_CASES = [  # (convolution_param text, bottom shape, axis, kernel, stride, pad, dilation)
    ("kernel_size: 3", (2, 3, 5, 6), 1, (3, 3), (1, 1), (0, 0), (1, 1)),
    ("kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2", (1, 2, 5, 4), 1,
     (2, 3), (2, 1), (1, 2), (1, 1)),
    ("kernel_size: 2 dilation: 2 pad: 1 stride: 2", (1, 2, 6, 7), 1, (2, 2), (2, 2), (1, 1),
     (2, 2)),
    ("kernel_size: 2 kernel_size: 1 kernel_size: 2 pad: 1", (1, 2, 3, 2, 3), 1, (2, 1, 2),
     (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    ("axis: 2 kernel_size: 2 stride: 2", (2, 2, 3, 4, 5), 2, (2, 2), (2, 2), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("params,shape,axis,kernel,stride,pad,dilation", IM2COL_CASES)
def test_im2col_forward(params, shape, axis, kernel, stride, pad, dilation):
    layer = make_layer(f'type: "Im2col" convolution_param {{ {params} }}', [shape])
    x = randn(shape, 18)
    (y,) = run_layer(layer, [x])
    ref = im2col_reference(x, axis, kernel, stride, pad, dilation)
    assert layer.top_shapes() == [ref.shape]
    np.testing.assert_array_equal(y, ref)


def test_im2col_backward_is_col2im():
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 }',
                       [(1, 2, 4, 5)])
    x = randn((1, 2, 4, 5), 19)
    dy = randn(layer.top_shapes()[0], 20)
    (dx,) = bottom_grads(layer, [x], [dy])
    expected = np.zeros(x.shape)                        # col2im: sum each column into its pixel
    ref_index = im2col_reference(np.arange(x.size, dtype=np.float64).reshape(x.shape) + 1, 1,
                                 (3, 3), (2, 2), (1, 1), (1, 1))
    for idx in np.ndindex(dy.shape):
        if ref_index[idx]:
            expected.flat[int(ref_index[idx]) - 1] += dy[idx]
    assert_close(dx, expected, rtol=1e-6, atol=1e-6)
    check_layer_grads(layer, [x])


def test_im2col_errors():
    with pytest.raises(NetspecError, match="kernel_size"):
        make_layer('type: "Im2col"', [(1, 2, 4, 4)])
    with pytest.raises(NetspecError, match="does not fit"):
        make_layer('type: "Im2col" convolution_param { kernel_size: 5 }', [(1, 2, 4, 4)])
