"""Utility layers against naive NumPy transcriptions of Caffe's layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netspec.errors import NetspecError
from netspec.layers import TRAIN, layer_class
from netspec.proto import caffe_pb2
from tests.layer_harness import check_layer_grads, make_layer, run_layer

jax.config.update("jax_default_matmul_precision", "highest")

SHAPE = (2, 3, 5, 7)


def randn(shape, seed=0, scale=1.0):
    return np.asarray(scale * np.random.RandomState(seed).randn(*shape), np.float32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


def layer_with_layout(text, shapes, channels_last, **kw):
    layer = make_layer(text, shapes, **kw)
    layer.channels_last = channels_last
    return layer


def bottom_grads(layer, bottoms, top_diffs, params=(), **kw):
    """JAX's gradient of sum_i(top_i * top_diff_i) w.r.t. every bottom."""
    def objective(bs):
        tops = run_layer(layer, bs, params, **kw)
        return sum(jnp.sum(t * d) for t, d in zip(tops, top_diffs))
    return [np.asarray(g) for g in jax.grad(objective)([jnp.asarray(b) for b in bottoms])]


# -- BatchNorm ---------------------------------------------------------------------

def batch_stats(x):
    """Per-channel mean and biased variance over all axes but 1 (naive loops)."""
    channels = 1 if x.ndim == 1 else x.shape[1]
    sums, counts = np.zeros(channels), np.zeros(channels)
    for idx in np.ndindex(x.shape):
        c = 0 if x.ndim == 1 else idx[1]
        sums[c] += x[idx]
        counts[c] += 1
    mean = sums / counts
    sq = np.zeros(channels)
    for idx in np.ndindex(x.shape):
        c = 0 if x.ndim == 1 else idx[1]
        sq[c] += (x[idx] - mean[c]) ** 2
    return mean, sq / counts, int(counts[0])


def normalize(x, mean, var, eps):
    y = np.empty(x.shape, np.float64)
    for idx in np.ndindex(x.shape):
        c = 0 if x.ndim == 1 else idx[1]
        y[idx] = (x[idx] - mean[c]) / np.sqrt(var[c] + eps)
    return y


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (6, 4), (4, 3, 5)])
def test_batchnorm_train_uses_batch_stats_and_updates_state(channels_last, shape):
    text = 'type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 }'
    layer = layer_with_layout(text, [shape], channels_last, phase=TRAIN)
    c = shape[1]
    assert layer.state_shapes() == [(c,), (c,), (1,)]
    x = randn(shape, seed=1, scale=2.0) + 0.5
    state = [randn((c,), seed=2), np.abs(randn((c,), seed=3)), np.array([2.5], np.float32)]
    (y,), new_state = run_layer(layer, [x], train=True, state=state, return_state=True)
    mean, var, m = batch_stats(x.astype(np.float64))
    assert_close(y, normalize(x, mean, var, 0.001), rtol=1e-5, atol=1e-5)
    assert_close(new_state[0], state[0] * 0.9 + mean)
    assert_close(new_state[1], state[1] * 0.9 + var * m / (m - 1))
    assert_close(new_state[2], [2.5 * 0.9 + 1])


@pytest.mark.parametrize("channels_last", [True, False])
def test_batchnorm_global_stats_forward_and_caffe_backward(channels_last):
    shape = (2, 3, 4, 3)
    layer = layer_with_layout('type: "BatchNorm"', [shape], channels_last)   # TEST phase
    x = randn(shape, seed=4)
    state = [randn((3,), seed=5), np.abs(randn((3,), seed=6)) + 0.1, np.array([4.0], np.float32)]
    (y,), new_state = run_layer(layer, [x], state=state, return_state=True)
    mean, var = state[0] / 4.0, state[1] / 4.0
    assert_close(y, normalize(x, mean, var, 1e-5), rtol=1e-5, atol=1e-5)
    assert new_state is None
    dy = randn(shape, seed=7)
    (gx,) = bottom_grads(layer, [x], [dy], state=state)
    expected = np.empty_like(dy)                 # Caffe: bottom_diff = top_diff / sqrt(var + eps)
    for idx in np.ndindex(shape):
        expected[idx] = dy[idx] / np.sqrt(var[idx[1]] + 1e-5)
    assert_close(gx, expected, rtol=1e-4)


def test_batchnorm_zero_scale_factor_means_zero_stats():
    layer = make_layer('type: "BatchNorm"', [(2, 3, 2, 2)])
    x = randn((2, 3, 2, 2), seed=8)
    state = [np.ones(3, np.float32), np.ones(3, np.float32), np.zeros(1, np.float32)]
    (y,) = run_layer(layer, [x], state=state)
    assert_close(y, x / np.sqrt(1e-5), rtol=1e-5)


def test_batchnorm_use_global_stats_overrides_phase():
    shape = (2, 3, 2, 2)
    x = randn(shape, seed=9)
    state = [randn((3,), seed=10), np.ones(3, np.float32), np.array([1.0], np.float32)]
    fixed = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: true }',
                       [shape], phase=TRAIN)
    (y,), new_state = run_layer(fixed, [x], train=True, state=state, return_state=True)
    assert_close(y, normalize(x, state[0], state[1], 1e-5), rtol=1e-5, atol=1e-5)
    assert new_state is None
    batch = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: false }', [shape])
    (y,) = run_layer(batch, [x], train=False, state=state)
    mean, var, _ = batch_stats(x.astype(np.float64))
    assert_close(y, normalize(x, mean, var, 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_batchnorm_train_gradient(channels_last):
    layer = layer_with_layout('type: "BatchNorm"', [(3, 2, 2, 1)], channels_last, phase=TRAIN)
    check_layer_grads(layer, [randn((3, 2, 2, 1), seed=11)], train=True, rtol=1e-3, atol=1e-5)


# -- Scale and Bias -------------------------------------------------------------------

def affine_reference(x, operand, axis, add):
    y = np.empty(x.shape, np.float64)
    k = operand.ndim
    for idx in np.ndindex(x.shape):
        o = operand[idx[axis:axis + k]] if k else operand[()]
        y[idx] = x[idx] + o if add else x[idx] * o
    return y


SCALE_CASES = [  # (params text, axis the operand starts at, operand shape)
    ("", 1, (3,)),
    ("axis: 1 num_axes: 2", 1, (3, 5)),
    ("axis: -2 num_axes: -1", 2, (5, 7)),
    ("axis: 0 num_axes: 0", 0, ()),
    ("axis: 0 num_axes: 4", 0, SHAPE),
]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("params,axis,operand_shape", SCALE_CASES)
def test_scale_learned_with_bias(channels_last, params, axis, operand_shape):
    text = f'type: "Scale" scale_param {{ {params} bias_term: true }}'
    layer = layer_with_layout(text, [SHAPE], channels_last)
    assert layer.param_shapes() == [operand_shape, operand_shape]
    x = randn(SHAPE, seed=12)
    scale, bias = randn(operand_shape, seed=13), randn(operand_shape, seed=14)
    (y,) = run_layer(layer, [x], [scale, bias])
    expected = affine_reference(affine_reference(x, scale, axis, False), bias, axis, True)
    assert_close(y, expected)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bottom_shape,operand_shape,axis", [
    ((2, 3, 4, 5), (2, 3, 4), 0),   # operand has 3 axes: it arrives in storage layout too
    ((2, 3, 4, 5), (3,), 1),
    ((4, 3), (3,), -1),
    ((2, 3, 4, 5), (), 2),
])
def test_scale_and_bias_from_second_bottom(channels_last, bottom_shape, operand_shape, axis):
    x, operand = randn(bottom_shape, seed=15), randn(operand_shape, seed=16)
    for kind, add in (("Scale", False), ("Bias", True)):
        text = f'type: "{kind}" {kind.lower()}_param {{ axis: {axis} }}'
        layer = layer_with_layout(text, [bottom_shape, operand_shape], channels_last)
        assert layer.param_shapes() == []
        (y,) = run_layer(layer, [x, operand])
        start = 0 if operand_shape == () else axis % len(bottom_shape)
        assert_close(y, affine_reference(x, operand, start, add))


@pytest.mark.parametrize("channels_last", [True, False])
def test_scale_gradients(channels_last):
    shape = (2, 3, 2, 1)
    layer = layer_with_layout('type: "Scale" scale_param { axis: 1 num_axes: 2 bias_term: true }',
                              [shape], channels_last)
    check_layer_grads(layer, [randn(shape, seed=17)],
                      [randn((3, 2), seed=18), randn((3, 2), seed=19)])
    two = layer_with_layout('type: "Scale" scale_param { axis: 0 bias_term: true }',
                            [shape, (2, 3, 2)], channels_last)
    assert two.param_shapes() == [(2, 3, 2)]
    check_layer_grads(two, [randn(shape, seed=20), randn((2, 3, 2), seed=21)],
                      [randn((2, 3, 2), seed=22)])


@pytest.mark.parametrize("channels_last", [True, False])
def test_bias_learned_and_gradient(channels_last):
    layer = layer_with_layout('type: "Bias" bias_param { axis: 1 num_axes: 1 }', [SHAPE],
                              channels_last)
    assert layer.param_shapes() == [(3,)]
    x, b = randn(SHAPE, seed=23), randn((3,), seed=24)
    assert_close(run_layer(layer, [x], [b])[0], affine_reference(x, b, 1, True))
    small = layer_with_layout('type: "Bias"', [(2, 3, 2, 1)], channels_last)
    check_layer_grads(small, [randn((2, 3, 2, 1), seed=25)], [randn((3,), seed=26)])


def test_scale_bias_fillers_and_errors():
    fillers = make_layer('type: "Scale" scale_param { bias_term: true }', [SHAPE]).param_fillers()
    assert [(f.type, f.value) for f in fillers] == [("constant", 1.0), ("constant", 0.0)]
    custom = make_layer('type: "Scale" scale_param { filler { type: "gaussian" std: 0.5 } '
                        'bias_term: true bias_filler { type: "constant" value: 0.2 } }',
                        [SHAPE]).param_fillers()
    assert (custom[0].type, custom[1].type) == ("gaussian", "constant")
    assert custom[1].value == pytest.approx(0.2)
    bias = make_layer('type: "Bias"', [SHAPE]).param_fillers()
    assert (bias[0].type, bias[0].value) == ("constant", 0.0)
    with pytest.raises(NetspecError, match=r"under_test.*\(3, 4\).*\(2, 3, 5, 7\)"):
        make_layer('type: "Scale"', [SHAPE, (3, 4)])
    with pytest.raises(NetspecError, match="under_test.*axis 4"):
        make_layer('type: "Bias" bias_param { axis: 4 }', [SHAPE])
    with pytest.raises(NetspecError, match="num_axes"):
        make_layer('type: "Scale" scale_param { axis: 2 num_axes: 3 }', [SHAPE])


# -- Eltwise ------------------------------------------------------------------------

def test_eltwise_sum_with_coeffs_and_prod():
    xs = [randn(SHAPE, seed=s) for s in (30, 31, 32)]
    layer = make_layer('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 '
                       'coeff: 2 }', [SHAPE] * 3)
    assert layer.elementwise
    assert_close(run_layer(layer, xs)[0], xs[0] - 0.5 * xs[1] + 2 * xs[2])
    plain = make_layer('type: "Eltwise"', [SHAPE] * 2)
    assert_close(run_layer(plain, xs[:2])[0], xs[0] + xs[1])
    prod = make_layer('type: "Eltwise" eltwise_param { operation: PROD }', [SHAPE] * 3)
    assert_close(run_layer(prod, xs)[0], xs[0] * xs[1] * xs[2])
    tiny = (2, 3, 1, 2)
    small = [randn(tiny, seed=s) for s in (33, 34, 35)]
    for text in ('operation: SUM coeff: 0.5 coeff: -1 coeff: 3', 'operation: PROD'):
        check_layer_grads(make_layer(f'type: "Eltwise" eltwise_param {{ {text} }}', [tiny] * 3),
                          small)


def test_eltwise_max_ties_and_caffe_backward():
    rs = np.random.RandomState(36)
    xs = [rs.randint(0, 3, SHAPE).astype(np.float32) for _ in range(3)]   # many ties
    layer = make_layer('type: "Eltwise" eltwise_param { operation: MAX }', [SHAPE] * 3)
    (y,) = run_layer(layer, xs)
    # Caffe's Forward_cpu: bottom 1 beats bottom 0 unless a > b; later bottoms need b > top.
    top, mask = np.empty(SHAPE, np.float32), np.empty(SHAPE, int)
    for idx in np.ndindex(SHAPE):
        top[idx], mask[idx] = (xs[0][idx], 0) if xs[0][idx] > xs[1][idx] else (xs[1][idx], 1)
        for i in range(2, 3):
            if xs[i][idx] > top[idx]:
                top[idx], mask[idx] = xs[i][idx], i
    assert_close(y, top)
    dy = randn(SHAPE, seed=37)
    grads = bottom_grads(layer, xs, [dy])
    for i in range(3):
        assert_close(grads[i], np.where(mask == i, dy, 0))


def test_eltwise_errors():
    with pytest.raises(NetspecError, match=r"under_test.*\(2, 3, 5, 6\).*\(2, 3, 5, 7\)"):
        make_layer('type: "Eltwise"', [SHAPE, (2, 3, 5, 6)])
    with pytest.raises(NetspecError, match="one coeff per bottom"):
        make_layer('type: "Eltwise" eltwise_param { coeff: 1 }', [SHAPE, SHAPE])
    with pytest.raises(NetspecError, match="SUM"):
        make_layer('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }',
                   [SHAPE, SHAPE])


# -- Concat, Slice, Split, Silence --------------------------------------------------------

def concat_reference(xs, axis):
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    out = np.empty(shape, np.float32)
    offset = 0
    for x in xs:
        for idx in np.ndindex(x.shape):
            target = list(idx)
            target[axis] += offset
            out[tuple(target)] = x[idx]
        offset += x.shape[axis]
    return out


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("text,axis,shapes", [
    ("", 1, [(2, 3, 4, 5), (2, 1, 4, 5), (2, 2, 4, 5)]),
    ("concat_param { axis: 0 }", 0, [(1, 3, 4, 5), (2, 3, 4, 5)]),
    ("concat_param { axis: -1 }", 3, [(2, 3, 4, 2), (2, 3, 4, 3)]),
    ("concat_param { concat_dim: 2 }", 2, [(2, 3, 1, 5), (2, 3, 4, 5)]),
    ("", 1, [(3, 2), (3, 5)]),
])
def test_concat(channels_last, text, axis, shapes):
    layer = layer_with_layout(f'type: "Concat" {text}', shapes, channels_last)
    xs = [randn(s, seed=40 + i) for i, s in enumerate(shapes)]
    expected = concat_reference(xs, axis)
    assert layer.top_shapes() == [expected.shape]
    assert_close(run_layer(layer, xs)[0], expected)


@pytest.mark.parametrize("channels_last", [True, False])
def test_concat_gradient_and_errors(channels_last):
    shapes = [(2, 1, 2, 1), (2, 2, 2, 1)]
    layer = layer_with_layout('type: "Concat"', shapes, channels_last)
    check_layer_grads(layer, [randn(s, seed=50 + i) for i, s in enumerate(shapes)])
    with pytest.raises(NetspecError, match=r"under_test.*\(2, 3, 4, 6\).*\(2, 3, 4, 5\)"):
        make_layer('type: "Concat"', [(2, 3, 4, 5), (2, 3, 4, 6)])
    with pytest.raises(NetspecError, match="not both"):
        make_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [SHAPE, SHAPE])


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("text,axis,sizes,ntops", [
    ("slice_param { axis: 1 slice_point: 1 slice_point: 4 }", 1, [1, 3, 2], 3),
    ("slice_param { axis: -1 }", 3, [3, 3], 2),
    ("slice_param { slice_dim: 2 slice_point: 2 }", 2, [2, 2], 2),
    ("slice_param { axis: 0 }", 0, [4], 1),
])
def test_slice(channels_last, text, axis, sizes, ntops):
    shape = [4, 6, 4, 6]
    layer = layer_with_layout(f'type: "Slice" {text}', [tuple(shape)], channels_last,
                              num_tops=ntops)
    x = randn(tuple(shape), seed=60)
    tops = run_layer(layer, [x])
    assert len(tops) == ntops
    start = 0
    for top, top_shape, size in zip(tops, layer.top_shapes(), sizes):
        expected_shape = list(shape)
        expected_shape[axis] = size
        expected = np.empty(expected_shape, np.float32)
        for idx in np.ndindex(*expected_shape):
            source = list(idx)
            source[axis] += start
            expected[idx] = x[tuple(source)]
        assert top_shape == tuple(expected_shape)
        assert_close(top, expected)
        start += size


def test_slice_gradient_and_errors():
    layer = make_layer('type: "Slice" slice_param { slice_point: 1 }', [(2, 3, 2, 1)], num_tops=2)
    check_layer_grads(layer, [randn((2, 3, 2, 1), seed=61)])
    with pytest.raises(NetspecError, match="under_test.*split evenly"):
        make_layer('type: "Slice"', [(2, 5, 2)], num_tops=2)
    with pytest.raises(NetspecError, match="slice_points"):
        make_layer('type: "Slice" slice_param { slice_point: 3 slice_point: 2 }',
                   [(2, 5, 2)], num_tops=3)
    with pytest.raises(NetspecError, match="need 2 tops"):
        make_layer('type: "Slice" slice_param { slice_point: 3 }', [(2, 5, 2)], num_tops=3)


def test_split_copies_and_sums_gradients():
    layer = make_layer('type: "Split"', [SHAPE], num_tops=3)
    x = randn(SHAPE, seed=62)
    tops = run_layer(layer, [x])
    assert len(tops) == 3 and all(np.array_equal(np.asarray(t), x) for t in tops)
    diffs = [randn(SHAPE, seed=63 + i) for i in range(3)]
    (gx,) = bottom_grads(layer, [x], diffs)
    assert_close(gx, diffs[0] + diffs[1] + diffs[2])


def test_silence_has_no_tops():
    # make_layer always adds a top, so build the LayerParameter directly.
    lp = caffe_pb2.LayerParameter(name="silence", type="Silence", bottom=["a", "b"])
    layer = layer_class("Silence")(lp, [SHAPE, (4,)])
    assert layer.top_shapes() == []
    assert run_layer(layer, [randn(SHAPE), randn((4,))]) == []


# -- Flatten, Reshape, Tile ---------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("", (2, 105)),
    ("flatten_param { axis: 2 }", (2, 3, 35)),
    ("flatten_param { axis: 1 end_axis: 2 }", (2, 15, 7)),
    ("flatten_param { axis: -3 end_axis: -2 }", (2, 15, 7)),
    ("flatten_param { axis: 0 end_axis: 0 }", (2, 3, 5, 7)),
])
def test_flatten(text, expected):
    layer = make_layer(f'type: "Flatten" {text}', [SHAPE])
    assert layer.top_shapes() == [expected]
    x = randn(SHAPE, seed=70)
    (y,) = run_layer(layer, [x])
    # Row-major order is kept: element i of the flat data stays element i.
    assert y.shape == expected
    np.testing.assert_array_equal(np.asarray(y).ravel(), x.ravel())


@pytest.mark.parametrize("text,expected", [
    ("shape { dim: 0 dim: -1 dim: 7 }", (2, 15, 7)),
    ("shape { dim: 6 } axis: 0 num_axes: 2", (6, 5, 7)),
    ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 3, 5, 7, 1)),
    ("shape { dim: 3 dim: 1 } axis: 1 num_axes: 1", (2, 3, 1, 5, 7)),
    ("shape { dim: -1 } axis: 1", (2, 105)),
    ("shape { dim: 0 dim: 0 dim: 35 }", (2, 3, 35)),
    ("shape { } axis: 2 num_axes: 0", (2, 3, 5, 7)),
])
def test_reshape(text, expected):
    layer = make_layer(f'type: "Reshape" reshape_param {{ {text} }}', [SHAPE])
    assert layer.top_shapes() == [expected]
    x = randn(SHAPE, seed=71)
    (y,) = run_layer(layer, [x])
    assert y.shape == expected
    np.testing.assert_array_equal(np.asarray(y).ravel(), x.ravel())


@pytest.mark.parametrize("text,message", [
    ("shape { dim: -1 dim: -1 }", "more than one -1"),
    ("shape { dim: 4 dim: -1 }", "cannot infer"),
    ("shape { dim: 2 dim: 3 }", "210"),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 }", "no axis 4"),
    ("shape { dim: 2 } axis: 5", "out of range"),
])
def test_reshape_errors(text, message):
    with pytest.raises(NetspecError, match="under_test.*" + message):
        make_layer(f'type: "Reshape" reshape_param {{ {text} }}', [SHAPE])


@pytest.mark.parametrize("axis,tiles", [(1, 3), (0, 2), (-1, 2), (3, 1)])
def test_tile(axis, tiles):
    layer = make_layer(f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}', [SHAPE])
    a = axis % 4
    x = randn(SHAPE, seed=72)
    shape = list(SHAPE)
    shape[a] *= tiles
    expected = np.empty(shape, np.float32)
    for idx in np.ndindex(*shape):
        source = list(idx)
        source[a] %= SHAPE[a]
        expected[idx] = x[tuple(source)]
    assert layer.top_shapes() == [tuple(shape)]
    assert_close(run_layer(layer, [x])[0], expected)


def test_tile_gradient_and_errors():
    layer = make_layer('type: "Tile" tile_param { axis: 1 tiles: 3 }', [(2, 2, 1)])
    check_layer_grads(layer, [randn((2, 2, 1), seed=73)])
    with pytest.raises(NetspecError, match="under_test.*tiles"):
        make_layer('type: "Tile" tile_param { axis: 1 }', [SHAPE])


# -- Reduction ------------------------------------------------------------------------

REDUCE = {
    "SUM": lambda v: v.sum(),
    "ASUM": lambda v: np.abs(v).sum(),
    "SUMSQ": lambda v: (v * v).sum(),
    "MEAN": lambda v: v.mean(),
}


@pytest.mark.parametrize("op", list(REDUCE))
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction_forward(op, axis):
    coeff = 0.5 if axis == 1 else -2.0
    text = f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}'
    layer = make_layer(text, [SHAPE])
    a = axis % 4
    x = randn(SHAPE, seed=74).astype(np.float64)
    expected = np.empty(SHAPE[:a])
    for idx in np.ndindex(*SHAPE[:a]):
        expected[idx] = coeff * REDUCE[op](x[idx].ravel())
    assert layer.top_shapes() == [SHAPE[:a]]
    (y,) = run_layer(layer, [x.astype(np.float32)])
    assert y.shape == SHAPE[:a]
    assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["SUM", "SUMSQ", "MEAN", "ASUM"])
def test_reduction_gradient(op):
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 '
                       f'coeff: 1.5 }}', [(2, 3, 2)])
    x = randn((2, 3, 2), seed=75)
    x[np.abs(x) < 0.05] = 0.3
    check_layer_grads(layer, [x])


def test_reduction_asum_gradient_is_zero_at_zero():
    layer = make_layer('type: "Reduction" reduction_param { operation: ASUM axis: 1 coeff: 2 }',
                       [(3, 4)])
    x = randn((3, 4), seed=76)
    x[0, :2] = 0.0
    dy = randn((3,), seed=77)
    (gx,) = bottom_grads(layer, [x], [dy])
    assert_close(gx, 2 * np.sign(x) * dy[:, None])     # Caffe: coeff * sign(x) * top_diff


# -- ArgMax -------------------------------------------------------------------------

def caffe_rank(values, k):
    """std::partial_sort of (value, index) pairs with std::greater: larger index first on ties."""
    pairs = sorted(((float(v), j) for j, v in enumerate(values)), reverse=True)
    return pairs[:k]


@pytest.mark.parametrize("out_max_val", [False, True])
@pytest.mark.parametrize("axis,top_k", [(1, 1), (1, 2), (3, 3), (-2, 2), (0, 1)])
def test_argmax_along_axis(out_max_val, axis, top_k):
    shape = (2, 4, 3, 5)
    x = np.random.RandomState(80).randint(0, 3, shape).astype(np.float32)  # many ties
    text = (f'type: "ArgMax" argmax_param {{ axis: {axis} top_k: {top_k} '
            f'out_max_val: {str(out_max_val).lower()} }}')
    layer = make_layer(text, [shape])
    a = axis % 4
    top_shape = list(shape)
    top_shape[a] = top_k
    expected = np.empty(top_shape, np.float32)
    rest = [range(n) for i, n in enumerate(shape) if i != a]
    for outer in np.ndindex(*[len(r) for r in rest]):
        line = [x[outer[:a] + (j,) + outer[a:]] for j in range(shape[a])]
        for rank, (value, index) in enumerate(caffe_rank(line, top_k)):
            expected[outer[:a] + (rank,) + outer[a:]] = value if out_max_val else index
    assert layer.top_shapes() == [tuple(top_shape)]
    (y,) = run_layer(layer, [x])
    np.testing.assert_array_equal(np.asarray(y), expected)


@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (3, 7)])
@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_without_axis(shape, out_max_val):
    x = np.random.RandomState(81).randint(0, 4, shape).astype(np.float32)
    top_k = 3
    layer = make_layer(f'type: "ArgMax" argmax_param {{ top_k: {top_k} '
                       f'out_max_val: {str(out_max_val).lower()} }}', [shape])
    rows = 2 if out_max_val else 1
    expected_shape = (shape[0], rows, top_k) + (1,) * (len(shape) - 3)
    assert layer.top_shapes() == [expected_shape]
    expected = np.empty((shape[0], rows, top_k), np.float32)
    for n in range(shape[0]):
        ranked = caffe_rank(x[n].ravel(), top_k)
        expected[n, 0] = [index for _, index in ranked]
        if out_max_val:
            expected[n, 1] = [value for value, _ in ranked]
    (y,) = run_layer(layer, [x])
    np.testing.assert_array_equal(np.asarray(y).reshape(expected.shape), expected)
    assert y.shape == expected_shape


def test_argmax_has_no_gradient_and_checks_top_k():
    layer = make_layer('type: "ArgMax" argmax_param { axis: 1 out_max_val: true }', [SHAPE])
    (gx,) = bottom_grads(layer, [randn(SHAPE, seed=82)], [randn((2, 1, 5, 7), seed=83)])
    assert np.all(gx == 0)
    with pytest.raises(NetspecError, match="under_test.*top_k 4"):
        make_layer('type: "ArgMax" argmax_param { axis: 1 top_k: 4 }', [SHAPE])


def test_layout_flags():
    assert make_layer('type: "Split"', [SHAPE], num_tops=2).elementwise
    assert make_layer('type: "Eltwise"', [SHAPE, SHAPE]).elementwise
    for kind in ("BatchNorm", "Scale", "Bias", "Concat", "Slice"):
        assert make_layer(f'type: "{kind}"', [SHAPE]).channels_last, kind
    for text in ('type: "Flatten"', 'type: "Reshape" reshape_param { shape { dim: -1 } }',
                 'type: "Reduction"', 'type: "ArgMax"', 'type: "Tile" tile_param { tiles: 2 }'):
        layer = make_layer(text, [SHAPE])
        assert not (layer.channels_last or layer.elementwise), text
