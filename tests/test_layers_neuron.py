"""Neuron layers against NumPy transcriptions of Caffe's Forward_cpu / Backward_cpu."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netspec.errors import NetspecError
from netspec.layers import TRAIN
from tests.layer_harness import check_layer_grads, make_layer, run_layer

jax.config.update("jax_default_matmul_precision", "highest")

SHAPE = (2, 3, 5, 7)       # odd sizes for forward checks
TINY = (2, 3, 2, 1)        # finite differences evaluate the layer twice per element


def randn(shape, seed=0, scale=1.0):
    return (scale * np.random.RandomState(seed).randn(*shape)).astype(np.float32)


def away_from(x, points, margin=0.05):
    """Push entries of x at least ``margin`` away from each kink in ``points``."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin) * 2
    return x


def forward(text, x, **kw):
    layer = make_layer(text, [x.shape], **kw)
    return layer, np.asarray(run_layer(layer, [x])[0])


def caffe_grad(layer, x, top_diff, params=()):
    """JAX's gradient of sum(top * top_diff) w.r.t. the bottom (and params)."""
    def objective(x, params):
        return jnp.sum(run_layer(layer, [x], params)[0] * top_diff)
    gx, gp = jax.grad(objective, argnums=(0, 1))(jnp.asarray(x), [jnp.asarray(p) for p in params])
    return np.asarray(gx), [np.asarray(g) for g in gp]


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# -- ReLU -------------------------------------------------------------------

@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_forward_and_caffe_backward_at_zero(slope):
    x = randn(SHAPE)
    x[0, 0, :2] = 0.0                              # exact zeros: Caffe's gradient there is slope
    text = f'type: "ReLU" relu_param {{ negative_slope: {slope} }}'
    layer, y = forward(text, x)
    expected = np.maximum(x, 0) + slope * np.minimum(x, 0)
    assert_close(y, expected)
    dy = randn(SHAPE, seed=3)
    gx, _ = caffe_grad(layer, x, dy)
    assert_close(gx, dy * ((x > 0) + slope * (x <= 0)))
    assert layer.elementwise


def test_relu_gradient_finite_differences():
    layer = make_layer('type: "ReLU" relu_param { negative_slope: 0.3 }', [TINY])
    check_layer_grads(layer, [away_from(randn(TINY, 1), [0.0])])


# -- ELU ---------------------------------------------------------------------

def test_elu_forward_and_backward():
    x = randn(SHAPE)
    x[1, 2, 0, :3] = 0.0
    layer, y = forward('type: "ELU" elu_param { alpha: 0.7 }', x)
    expected = np.maximum(x, 0) + 0.7 * (np.exp(np.minimum(x, 0)) - 1)
    assert_close(y, expected)
    dy = randn(SHAPE, seed=4)
    gx, _ = caffe_grad(layer, x, dy)
    assert_close(gx, np.where(x > 0, dy, dy * (expected + 0.7)))
    check_layer_grads(make_layer('type: "ELU" elu_param { alpha: 0.7 }', [TINY]),
                      [away_from(randn(TINY, 2), [0.0])])


# -- smooth pointwise layers ---------------------------------------------------

SMOOTH = [
    ('type: "Sigmoid"', lambda x: 1.0 / (1.0 + np.exp(-x))),
    ('type: "TanH"', np.tanh),
    ('type: "BNLL"', lambda x: np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))),
                                        np.log1p(np.exp(np.minimum(x, 0))))),
    ('type: "Swish" swish_param { beta: 1.5 }', lambda x: x / (1.0 + np.exp(-1.5 * x))),
    ('type: "Power" power_param { power: 3 scale: 0.5 shift: -0.25 }',
     lambda x: (-0.25 + 0.5 * x.astype(np.float64)) ** 3),
    ('type: "Power" power_param { power: -1 scale: 1.0 shift: 4 }', lambda x: 1.0 / (4 + x)),
    ('type: "Power" power_param { power: 0.5 scale: 0.5 shift: 3 }',
     lambda x: np.sqrt(3 + 0.5 * x)),
    ('type: "Power" power_param { power: 1 scale: -2 shift: 1 }', lambda x: 1 - 2 * x),
    ('type: "Exp"', np.exp),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1.5 }', lambda x: 2.0 ** (1.5 + 0.5 * x)),
    ('type: "Log" log_param { shift: 5 }', lambda x: np.log(5 + x)),
    ('type: "Log" log_param { base: 10 scale: 2 shift: 9 }', lambda x: np.log10(9 + 2 * x)),
]


@pytest.mark.parametrize("text,reference", SMOOTH)
def test_smooth_forward(text, reference):
    x = randn(SHAPE, seed=5, scale=1.5)
    layer, y = forward(text, x)
    assert y.dtype == np.float32
    assert_close(y, reference(x.astype(np.float64)))
    assert layer.elementwise


@pytest.mark.parametrize("text,reference", SMOOTH)
def test_smooth_gradient(text, reference):
    layer = make_layer(text, [TINY])
    check_layer_grads(layer, [randn(TINY, seed=6)])


def test_bnll_extreme_inputs_are_finite():
    x = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], np.float32).reshape(1, 5)
    layer, y = forward('type: "BNLL"', x)
    assert_close(y, np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0))
    gx, _ = caffe_grad(layer, x, np.ones_like(x))
    assert_close(gx, 1.0 / (1.0 + np.exp(-x.astype(np.float64))))


def test_power_zero_power_and_zero_scale_have_zero_gradient():
    x = randn(TINY, seed=7)
    for text, value in [('power_param { power: 0 scale: 3 shift: 2 }', np.ones_like(x)),
                        ('power_param { power: 2 scale: 0 shift: 3 }', np.full_like(x, 9.0))]:
        layer, y = forward('type: "Power" ' + text, x)
        assert_close(y, value)
        gx, _ = caffe_grad(layer, x, randn(TINY, seed=8))
        assert np.all(gx == 0)


@pytest.mark.parametrize("kind", ["Exp", "Log"])
def test_exp_log_reject_nonpositive_base(kind):
    with pytest.raises(NetspecError, match="under_test.*base"):
        make_layer(f'type: "{kind}" {kind.lower()}_param {{ base: -2 }}', [TINY])


# -- kinked layers: gradient is Caffe's, not the symmetric derivative ------------

def test_absval_gradient_is_sign_with_zero_at_zero():
    x = randn(SHAPE, seed=9)
    x[0, 1, 1, :4] = 0.0
    layer, y = forward('type: "AbsVal"', x)
    assert_close(y, np.abs(x))
    dy = randn(SHAPE, seed=10)
    gx, _ = caffe_grad(layer, x, dy)
    assert_close(gx, np.sign(x) * dy)
    check_layer_grads(make_layer('type: "AbsVal"', [TINY]), [away_from(randn(TINY, 11), [0.0])])


def test_clip_forward_and_gradient_includes_bounds():
    x = randn(SHAPE, seed=12, scale=2.0)
    x[0, 0, 0, :2] = [-0.5, 1.25]                  # exactly at the bounds: gradient 1 in Caffe
    layer, y = forward('type: "Clip" clip_param { min: -0.5 max: 1.25 }', x)
    assert_close(y, np.clip(x, -0.5, 1.25))
    dy = randn(SHAPE, seed=13)
    gx, _ = caffe_grad(layer, x, dy)
    assert_close(gx, dy * ((x >= -0.5) & (x <= 1.25)))


def test_clip_requires_both_bounds():
    with pytest.raises(NetspecError, match="under_test.*min and max"):
        make_layer('type: "Clip" clip_param { min: 0 }', [TINY])


def test_threshold_forward_and_no_gradient():
    x = randn(SHAPE, seed=14)
    x[0, 0, 0, 0] = 0.3                            # equal to threshold -> 0 (strict >)
    layer, y = forward('type: "Threshold" threshold_param { threshold: 0.3 }', x)
    expected = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        expected[idx] = 1.0 if x[idx] > np.float32(0.3) else 0.0
    assert_close(y, expected)
    gx, _ = caffe_grad(layer, x, randn(SHAPE, seed=15))
    assert np.all(gx == 0)


# -- Dropout ---------------------------------------------------------------------

def test_dropout_test_phase_is_identity():
    x = randn(SHAPE, seed=16)
    layer, y = forward('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x)
    np.testing.assert_array_equal(y, x)


def test_dropout_train_keeps_with_prob_and_scales():
    ratio = 0.3
    x = np.abs(randn((4, 8, 16, 16), seed=17)) + 0.5   # nonzero, so dropped entries are visible
    layer = make_layer(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}',
                       [x.shape], phase=TRAIN)
    key = jax.random.PRNGKey(0)
    y = np.asarray(run_layer(layer, [x], train=True, rng=key)[0])
    kept = y != 0
    assert_close(y[kept], x[kept] / (1 - ratio))
    n = x.size                                         # kept fraction ~ Binomial(n, 0.7)/n
    assert abs(kept.mean() - (1 - ratio)) < 5 * np.sqrt(ratio * (1 - ratio) / n)
    again = np.asarray(run_layer(layer, [x], train=True, rng=key)[0])
    np.testing.assert_array_equal(again, y)            # same key, same mask
    other = np.asarray(run_layer(layer, [x], train=True, rng=jax.random.PRNGKey(1))[0])
    assert np.any((other != 0) != kept)
    dy = randn(x.shape, seed=18)
    gx = np.asarray(jax.grad(lambda b: jnp.sum(run_layer(layer, [b], train=True,
                                                         rng=key)[0] * dy))(x))
    assert_close(gx, dy * kept / (1 - ratio))


def test_dropout_train_without_key_and_bad_ratio_are_errors():
    layer = make_layer('type: "Dropout"', [TINY], phase=TRAIN)
    with pytest.raises(NetspecError, match="under_test.*random key"):
        run_layer(layer, [randn(TINY)], train=True, rng=None)
    with pytest.raises(NetspecError, match="dropout_ratio"):
        make_layer('type: "Dropout" dropout_param { dropout_ratio: 1.0 }', [TINY])


# -- PReLU -------------------------------------------------------------------------

def prelu_reference(x, slope, shared):
    y = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        a = slope[0] if shared else slope[idx[1]]
        y[idx] = max(x[idx], 0) + a * min(x[idx], 0)
    return y


def prelu_caffe_backward(x, slope, dy, shared):
    dx = np.empty_like(x)
    da = np.zeros_like(slope)
    for idx in np.ndindex(x.shape):
        c = 0 if shared else idx[1]
        dx[idx] = dy[idx] * (1.0 if x[idx] > 0 else slope[c])
        da[c] += dy[idx] * x[idx] * (x[idx] <= 0)
    return dx, da


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 3)])
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_forward_and_caffe_backward(channels_last, shape, shared):
    text = f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} }}'
    layer = make_layer(text, [shape])
    layer.channels_last = channels_last
    assert layer.param_shapes() == [(1,) if shared else (3,)]
    x = randn(shape, seed=19)
    x.reshape(-1)[:3] = 0.0
    slope = randn(layer.param_shapes()[0], seed=20)
    y = np.asarray(run_layer(layer, [x], [slope])[0])
    assert_close(y, prelu_reference(x, slope, shared))
    dy = randn(shape, seed=21)
    gx, (gslope,) = caffe_grad(layer, x, dy, [slope])
    dx, da = prelu_caffe_backward(x, slope, dy, shared)
    assert_close(gx, dx)
    assert_close(gslope, da, rtol=1e-4, atol=1e-5)


def test_prelu_default_filler_and_finite_differences():
    layer = make_layer('type: "PReLU"', [TINY])
    (filler,) = layer.param_fillers()
    assert (filler.type, filler.value) == ("constant", pytest.approx(0.25))
    custom = make_layer('type: "PReLU" prelu_param { filler { type: "gaussian" std: 0.1 } }',
                        [TINY]).param_fillers()[0]
    assert (custom.type, custom.std) == ("gaussian", pytest.approx(0.1))
    check_layer_grads(layer, [away_from(randn(TINY, 22), [0.0])], [randn((3,), seed=23)])


def test_prelu_needs_two_axes():
    with pytest.raises(NetspecError, match=r"under_test.*\(5,\)"):
        make_layer('type: "PReLU"', [(5,)])


def test_layout_flags():
    pointwise = ["ReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL",
                 "Threshold", "Dropout", "Swish"]
    for kind in pointwise:
        layer = make_layer(f'type: "{kind}"', [TINY])
        assert layer.elementwise and not layer.channels_last, kind
    assert make_layer('type: "Clip" clip_param { min: 0 max: 1 }', [TINY]).elementwise
    assert make_layer('type: "PReLU"', [TINY]).channels_last
