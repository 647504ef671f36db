"""Winograd convolutions (netspec.layers.winograd) against NumPy transcriptions of the
direct cross-correlation and its two gradients, and the CPU policy that picks them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netspec.layers import conv_grad, winograd


def correlate(x, k, padding):
    """Direct 3x3 cross-correlation in float64: x (N, H, W, C), k (3, 3, C, O)."""
    (t, b), (l, r) = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (t, b), (l, r), (0, 0)))
    oh, ow = xp.shape[1] - 2, xp.shape[2] - 2
    y = np.zeros((x.shape[0], oh, ow, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nhwc,co->nhwo", xp[:, i:i + oh, j:j + ow], k[i, j].astype(np.float64))
    return y


def correlate_grads(x, k, padding, dy):
    """d/dx and d/dk of sum(correlate(x, k) * dy), written out in float64."""
    (t, b), (l, r) = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (t, b), (l, r), (0, 0)))
    oh, ow = dy.shape[1:3]
    dxp = np.zeros_like(xp)
    dk = np.zeros(k.shape)
    for i in range(3):
        for j in range(3):
            dxp[:, i:i + oh, j:j + ow] += np.einsum("nhwo,co->nhwc", dy, k[i, j])
            dk[i, j] = np.einsum("nhwc,nhwo->co", xp[:, i:i + oh, j:j + ow], dy)
    return dxp[:, t:t + x.shape[1], l:l + x.shape[2]], dk


@pytest.mark.parametrize("m", [2, 4])
def test_transforms_compute_a_tile_exactly(m):
    """A^T [(G g G^T) * (B^T d B)] A is the tile's correlation, in float64."""
    bt, g, at = winograd.transforms(m)
    assert bt.shape == (m + 2, m + 2) and g.shape == (m + 2, 3) and at.shape == (m, m + 2)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, k = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
        tile = at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T
        direct = [[np.sum(d[i:i + 3, j:j + 3] * k) for j in range(m)] for i in range(m)]
        np.testing.assert_allclose(tile, direct, rtol=0, atol=1e-12)


def test_f2x2_transforms_are_exact_in_binary():
    """F(2x2,3x3)'s coefficients are 0, +-1 and +-1/2 (Lavin's matrices up to signs):
    the transforms themselves round nothing."""
    for mat in winograd.transforms(2):
        assert set(np.abs(mat).ravel()) <= {0.0, 0.5, 1.0}
    bt, g, at = winograd.transforms(2)
    np.testing.assert_array_equal(np.abs(bt), [[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(np.abs(at), [[1, 1, 1, 0], [0, 1, 1, 1]])


CASES = [  # (n, h, w, c, o, padding): odd sizes, partial tiles, no/asymmetric padding
    (1, 5, 7, 3, 4, ((1, 1), (1, 1))),
    (2, 9, 6, 2, 3, ((0, 0), (0, 0))),
    (1, 3, 3, 2, 2, ((2, 1), (0, 3))),
    (1, 13, 11, 5, 6, ((1, 2), (2, 0))),
    (3, 1, 1, 4, 2, ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", CASES)
def test_winograd_conv_and_gradients_match_direct(m, case):
    n, h, w, c, o, padding = case
    rng = np.random.default_rng(h * w + m)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    k = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    y, pullback = jax.vjp(lambda a, b: winograd.winograd_conv(a, b, padding, m), x, k)
    ref = correlate(x, k, padding)
    assert y.shape == ref.shape and y.dtype == jnp.float32
    tol = 2e-6 if m == 2 else 2e-5        # relative to each result's largest value
    np.testing.assert_allclose(y, ref, rtol=0, atol=tol * np.abs(ref).max())
    dy = rng.standard_normal(ref.shape).astype(np.float32)
    dx, dk = pullback(dy)
    ref_dx, ref_dk = correlate_grads(x, k, padding, dy)
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=tol * np.abs(ref_dx).max())
    np.testing.assert_allclose(dk, ref_dk, rtol=0, atol=tol * np.abs(ref_dk).max())


def test_f2x2_is_as_exact_as_the_direct_convolution():
    """On a VGG-like layer F(2x2,3x3)'s float32 error against float64 is no larger than
    XLA's direct convolution's (both ~1e-7 of the range); F(4x4,3x3)'s is bounded."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 24, 24, 128)).astype(np.float32)
    k = (rng.standard_normal((3, 3, 128, 128)) / np.sqrt(9 * 128)).astype(np.float32)
    padding = ((1, 1), (1, 1))
    ref = correlate(x, k, padding)
    scale = np.abs(ref).max()
    direct = conv_grad._xla_conv(x, k, (1, 1), padding, (1, 1))
    err = {name: np.abs(np.asarray(y, np.float64) - ref).max() / scale for name, y in [
        ("direct", direct), ("f2", winograd.winograd_conv(x, k, padding, 2)),
        ("f4", winograd.winograd_conv(x, k, padding, 4))]}
    assert err["f2"] <= 3 * err["direct"] + 1e-7, err
    assert err["f4"] < 2e-5, err


def _tile(shape, channels_out, precision="highest", padding=((1, 1), (1, 1))):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, shape[-1], channels_out), jnp.float32)
    with jax.default_matmul_precision(precision):
        return conv_grad.winograd_tile(x, k, (1, 1), padding, (1, 1))


def test_policy_picks_winograd_where_it_pays():
    assert _tile((1, 89, 89, 512), 512) == 2                         # FCN-8s conv4
    assert _tile((1, 89, 89, 512), 512, "tensorfloat32") == 4        # --precision tf32
    assert _tile((1, 712, 712, 3), 64) is None                       # conv1_1: 3 channels
    assert _tile((1, 710, 710, 64), 64) is None                      # conv1_2: 64 channels
    assert _tile((1, 7, 7, 512), 512) is None                        # 16 tiles: kernel-bound
    assert _tile((1, 14, 14, 256), 256) == 2
    assert _tile((1, 14, 14, 256), 256, "tensorfloat32") == 2        # too few 4x4 tiles
    assert _tile((1, 200, 200, 64), 64, "tensorfloat32") == 4
    assert _tile((1, 89, 89, 512), 512, padding=((0, -1), (1, 1))) is None   # cropping
    x = jax.ShapeDtypeStruct((1, 89, 89, 512), jnp.bfloat16)          # bf16 compute: F(4x4)
    k = jax.ShapeDtypeStruct((3, 3, 512, 512), jnp.float32)
    assert conv_grad.winograd_tile(x, k, (1, 1), ((1, 1), (1, 1)), (1, 1)) == 4
    x = jax.ShapeDtypeStruct((1, 89, 89, 512), jnp.float16)           # other types: direct
    assert conv_grad.winograd_tile(x, k, (1, 1), ((1, 1), (1, 1)), (1, 1)) is None
    for strides, dilation in [((2, 2), (1, 1)), ((1, 1), (2, 2))]:
        k = jax.ShapeDtypeStruct((3, 3, 512, 512), jnp.float32)
        x = jax.ShapeDtypeStruct((1, 89, 89, 512), jnp.float32)
        assert conv_grad.winograd_tile(x, k, strides, ((1, 1), (1, 1)), dilation) is None


def test_net_layer_uses_winograd_with_the_same_results(monkeypatch):
    """A Convolution layer wide enough for Winograd gives the direct path's forward and
    gradients (F(2x2,3x3) in fp32, F(4x4,3x3) under tf32)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((1, 24, 24, 128)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 128, 128)) / 30, jnp.float32)
    args = dict(window_strides=(1, 1), padding=[(1, 1), (1, 1)], rhs_dilation=(1, 1),
                dimension_numbers=conv_grad.NHWC_HWIO)
    chosen = []
    real = conv_grad.winograd_tile
    monkeypatch.setattr(conv_grad, "winograd_tile", lambda *a: chosen.append(real(*a)) or chosen[-1])

    def run(precision):
        loss = lambda a, b: jnp.sum(jnp.sin(conv_grad.conv_general_dilated(a, b, **args)))
        with jax.default_matmul_precision(precision):
            return jax.value_and_grad(loss, argnums=(0, 1))(x, k)

    fast = run("highest")
    faster = run("tensorfloat32")
    monkeypatch.setattr(conv_grad, "winograd_tile", lambda *a: None)
    direct = run("highest")
    assert chosen == [2, 4]
    for got, tol in [(fast, 1e-5), (faster, 1e-4)]:
        np.testing.assert_allclose(got[0], direct[0], rtol=tol)
        for g, d in zip(got[1], direct[1]):
            np.testing.assert_allclose(g, d, rtol=0, atol=tol * np.abs(d).max())


def test_bfloat16_input_computes_in_float32():
    """In a bf16 pass (bfloat16 activations, float32 master kernel) the Winograd
    convolution computes in float32: y and dx in bfloat16, the kernel's gradient in
    float32, each within bfloat16's rounding of the float64 results."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 9, 10, 6)).astype(np.float32)
    k = rng.standard_normal((3, 3, 6, 5)).astype(np.float32)
    padding = ((1, 1), (1, 1))
    xb = jnp.asarray(x, jnp.bfloat16)
    x_rounded = np.asarray(xb.astype(jnp.float32))
    y, pullback = jax.vjp(lambda a, b: winograd.winograd_conv(a, b, padding, 4), xb, jnp.asarray(k))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dk = pullback(jnp.asarray(dy, jnp.bfloat16))
    assert y.dtype == dx.dtype == jnp.bfloat16 and dk.dtype == jnp.float32
    ref = correlate(x_rounded, k, padding)
    dy_rounded = np.asarray(jnp.asarray(dy, jnp.bfloat16).astype(jnp.float32))
    ref_dx, ref_dk = correlate_grads(x_rounded, k, padding, dy_rounded)
    for got, want, tol in [(y, ref, 8e-3), (dx, ref_dx, 8e-3), (dk, ref_dk, 2e-5)]:
        got = np.asarray(jnp.asarray(got, jnp.float32))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
