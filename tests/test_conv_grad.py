"""The GEMM weight-gradient convolution against jax.grad of lax.conv_general_dilated."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax

from netspec.layers import conv_grad

jax.config.update("jax_default_matmul_precision", "highest")

NHWC_HWIO = conv_grad.NHWC_HWIO

CASES = [
    # (N, H, W, C, O, kernel, stride, pad, dilation)
    (1, 7, 9, 3, 5, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (2, 11, 8, 4, 6, (3, 2), (2, 3), ((2, 0), (1, 3)), (1, 1)),
    (1, 13, 10, 5, 3, (3, 3), (1, 2), ((2, 2), (0, 1)), (2, 3)),
    (2, 6, 7, 2, 4, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    (1, 5, 5, 3, 2, (5, 5), (1, 1), ((4, 4), (4, 4)), (1, 1)),
    (1, 9, 12, 6, 7, (7, 7), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    (1, 10, 10, 4, 4, (3, 3), (3, 3), ((1, 2), (2, 1)), (1, 1)),
]


def _reference(x, w, stride, pad, dilation):
    return lax.conv_general_dilated(x, w, stride, pad, rhs_dilation=dilation,
                                    dimension_numbers=NHWC_HWIO,
                                    precision=lax.Precision.HIGHEST)


def _random(shape, rs):
    return jnp.asarray(rs.standard_normal(shape).astype(np.float32))


def _naive_weight_grad(x, g, kernel, stride, pad, dilation):
    """dW[i, j, c, o] = sum_{n, p, q} xpad[n, i*d + p*s, j*d + q*s, c] * g[n, p, q, o] in NumPy."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    oh, ow = g.shape[1:3]
    dw = np.zeros(kernel + (x.shape[3], g.shape[3]))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            rows = i * dilation[0] + stride[0] * np.arange(oh)
            cols = j * dilation[1] + stride[1] * np.arange(ow)
            view = xp[:, rows][:, :, cols]
            dw[i, j] = np.einsum("npqc,npqo->co", view, g)
    return dw


PATHS = {"dispatch": lambda x, w, s, p, d: conv_grad.conv_general_dilated(
             x, w, s, p, rhs_dilation=d, dimension_numbers=NHWC_HWIO),
         "nhwc": conv_grad.conv2d_nhwc,
         "im2col": conv_grad.conv2d_im2col}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("case", CASES)
def test_matches_lax_forward_and_gradients(case, path):
    n, h, w_, c, o, kernel, stride, pad, dilation = case
    rs = np.random.RandomState(sum(case[:5]))
    x = _random((n, h, w_, c), rs)
    w = _random(kernel + (c, o), rs)
    y_ref = _reference(x, w, stride, pad, dilation)
    g = _random(y_ref.shape, rs)

    def loss(conv):
        return lambda x, w: jnp.sum(conv(x, w) * g)

    ours = jax.jit(lambda x, w: PATHS[path](x, w, stride, pad, dilation))
    theirs = lambda x, w: _reference(x, w, stride, pad, dilation)
    np.testing.assert_allclose(ours(x, w), y_ref, rtol=1e-5, atol=1e-5)
    dx, dw = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
    dx_ref, dw_ref = jax.grad(loss(theirs), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, _naive_weight_grad(x, g, kernel, stride, pad, dilation),
                               rtol=1e-5, atol=1e-4)


def test_dispatch_picks_im2col_for_small_outputs_and_1x1():
    x = jnp.zeros((1, 22, 22, 8))
    fits = conv_grad._patches_fit_kernel
    assert fits(x, jnp.zeros((7, 7, 8, 256)), (1, 1), ((0, 0), (0, 0)), (1, 1))  # 16*16 <= 256
    assert not fits(x, jnp.zeros((7, 7, 8, 255)), (1, 1), ((0, 0), (0, 0)), (1, 1))
    assert fits(x, jnp.zeros((1, 1, 8, 2)), (1, 1), ((0, 0), (0, 0)), (1, 1))
    assert not fits(x, jnp.zeros((3, 3, 8, 64)), (1, 1), ((1, 1), (1, 1)), (1, 1))


def test_weight_grad_gemm_directly():
    rs = np.random.RandomState(3)
    x = _random((2, 9, 8, 3), rs)
    g = _random((2, 4, 3, 5), rs)  # kernel 3x2, stride 2x3, pad ((1, 0), (2, 1))
    pad = ((1, 0), (2, 1))
    dw = conv_grad.weight_grad_gemm(x, g, (3, 2), (2, 3), pad, (1, 1))
    np.testing.assert_allclose(dw, _naive_weight_grad(x, g, (3, 2), (2, 3), pad, (1, 1)),
                               rtol=1e-5, atol=1e-4)


BLOCK_CASES = CASES + [
    # edge chunks only (pads wider than the map), one interior row, uneven tail
    (1, 4, 5, 3, 2, (3, 3), (1, 1), ((5, 6), (1, 1)), (1, 1)),
    (2, 9, 6, 3, 4, (3, 3), (2, 1), ((0, 3), (1, 0)), (1, 1)),
    (1, 12, 7, 4, 3, (3, 2), (1, 1), ((1, 1), (0, 0)), (2, 1)),
]


@pytest.mark.parametrize("rows", [1, 3, None])
@pytest.mark.parametrize("case", BLOCK_CASES)
def test_weight_grad_blocked_matches_naive(case, rows):
    """Blocks of 1-3 output rows (some blocks run past the last row) and the default."""
    n, h, w_, c, o, kernel, stride, pad, dilation = case
    rs = np.random.RandomState(sum(case[:5]) + 1)
    x = _random((n, h, w_, c), rs)
    out_shape = _reference(x, jnp.zeros(kernel + (c, o)), stride, pad, dilation).shape
    g = _random(out_shape, rs)
    blocked = jax.jit(lambda x, g: conv_grad.weight_grad_blocked(x, g, kernel, stride, pad,
                                                                 dilation, rows=rows))
    np.testing.assert_allclose(blocked(x, g), _naive_weight_grad(x, g, kernel, stride, pad, dilation),
                               rtol=1e-5, atol=1e-4)


def test_block_rows_sizes_the_patch_block():
    row = 698 * 9 * 64  # patch elements per output row of conv1_2
    rows = conv_grad.block_rows(1, 698, 9 * 64, 64)
    assert (rows - 1) * row < conv_grad.BLOCK_PATCH_ELEMENTS <= rows * row
    rows = conv_grad.block_rows(1, 88, 9 * 512, 512)  # conv4_2: the accumulator decides
    assert (rows - 1) * 88 < 2 * 512 <= rows * 88
    assert conv_grad.block_rows(4, 10_000, 9 * 512, 8) == 1  # at least one row


def test_cpu_weight_grad_for_few_and_many_channels_and_cropping():
    """Blocked GEMMs for any channel count, kernel-row GEMMs for negative padding: the naive sum."""
    rs = np.random.RandomState(11)
    for c, pad in ((3, ((1, 1), (1, 1))), (16, ((1, 1), (1, 1))), (3, ((-1, 1), (1, -1)))):
        x = _random((1, 6, 5, c), rs)
        g_shape = (1, 6 + sum(pad[0]) - 2, 5 + sum(pad[1]) - 2, 4)
        g = _random(g_shape, rs)
        dw = conv_grad.weight_grad_cpu(x, g, (3, 3), (1, 1), pad, (1, 1))
        xp = np.asarray(x)[:, max(-pad[0][0], 0):x.shape[1] - max(-pad[0][1], 0),
                           max(-pad[1][0], 0):x.shape[2] - max(-pad[1][1], 0)]
        kept = tuple((max(p[0], 0), max(p[1], 0)) for p in pad)
        np.testing.assert_allclose(dw, _naive_weight_grad(xp, g, (3, 3), (1, 1), kept, (1, 1)),
                                   rtol=1e-5, atol=1e-4)


def test_other_layouts_and_groups_fall_back_to_lax():
    rs = np.random.RandomState(5)
    x = _random((1, 6, 7, 4), rs)
    w = _random((3, 3, 2, 6), rs)
    pad = ((1, 1), (1, 1))
    ours = conv_grad.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=NHWC_HWIO,
                                          feature_group_count=2)
    ref = lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=NHWC_HWIO,
                                   feature_group_count=2)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    x_nchw = jnp.moveaxis(x, 3, 1)
    w_oihw = jnp.transpose(_random((3, 3, 4, 5), rs), (3, 2, 0, 1))
    got = jax.grad(lambda w: jnp.sum(conv_grad.conv_general_dilated(
        x_nchw, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")) ** 2))(w_oihw)
    want = jax.grad(lambda w: jnp.sum(lax.conv_general_dilated(
        x_nchw, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")) ** 2))(w_oihw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_bfloat16_gradient_dtype_and_value():
    rs = np.random.RandomState(7)
    x = _random((1, 8, 8, 4), rs).astype(jnp.bfloat16)
    w = _random((3, 3, 4, 4), rs).astype(jnp.bfloat16)
    pad = ((1, 1), (1, 1))
    conv = lambda x, w: conv_grad.conv_general_dilated(x, w, (1, 1), pad,
                                                       dimension_numbers=NHWC_HWIO)
    dw = jax.grad(lambda w: jnp.sum(conv(x, w).astype(jnp.float32)))(w)
    assert dw.dtype == jnp.bfloat16
    g = np.ones((1, 8, 8, 4), np.float32)
    want = _naive_weight_grad(np.asarray(x, np.float32), g, (3, 3), (1, 1), pad, (1, 1))
    np.testing.assert_allclose(np.asarray(dw, np.float32), want, rtol=2e-2, atol=0.5)


def test_off_the_cpu_every_path_is_xla_convolution(monkeypatch):
    """On a GPU (runs_on_cpu() false) no GEMM path is traced: XLA's convolution and its own gradient."""
    monkeypatch.setattr(conv_grad, "runs_on_cpu", lambda: False)
    rs = np.random.RandomState(3)
    for kernel_hw, spatial in (((1, 1), 6), ((3, 3), 9)):          # im2col-sized, then weight-grad path
        x = jnp.asarray(rs.randn(1, spatial, spatial, 4), jnp.float32)
        k = jnp.asarray(rs.randn(*kernel_hw, 4, 5), jnp.float32)

        def ours(x, k):
            return jnp.sum(conv_grad.conv_general_dilated(x, k, (1, 1), [(1, 1), (1, 1)],
                                                          dimension_numbers=conv_grad.NHWC_HWIO) ** 2)

        def plain(x, k):
            return jnp.sum(lax.conv_general_dilated(x, k, (1, 1), [(1, 1), (1, 1)],
                                                    dimension_numbers=conv_grad.NHWC_HWIO) ** 2)
        jaxpr = str(jax.make_jaxpr(jax.grad(ours, argnums=(0, 1)))(x, k))
        assert "dot_general" not in jaxpr and "conv_general_dilated" in jaxpr
        for a, b in zip(jax.grad(ours, argnums=(0, 1))(x, k), jax.grad(plain, argnums=(0, 1))(x, k)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    assert conv_grad.runs_on_cpu()          # this machine
