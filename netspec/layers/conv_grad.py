"""2-D convolution whose weight gradient is a few large matrix products (for CPU).

XLA's CPU backend computes the weight gradient of a convolution 3-7x slower than
the forward pass.  Here the weight gradient is instead, for each kernel row ``i``,
one GEMM ``X_i^T @ dY`` where ``X_i`` gathers the ``kw`` shifted views of the padded
input side by side along channels: ``(N*OH*OW, kw*C)^T @ (N*OH*OW, O)``.  Those
are the products the CPU matmul kernels run near peak.  The forward pass and the
data gradient stay XLA's own convolutions.  On other platforms (GPU) everything is
XLA's own convolution (see ``runs_on_cpu``).

Convolutions whose patch matrix is no bigger than their kernel (1x1 convolutions,
FCN's fc6 7x7x512x4096 on a 22x22 map) run as one im2col GEMM instead, forward and
backward: XLA's CPU convolution is slow there, and the GEMM reads the kernel in
Caffe's (O, C, KH, KW) order, so the (KH, KW, C, O) transpose the caller made is
undone (XLA cancels the two transposes) rather than paid for on every call.

3x3 stride-1 convolutions with enough channels run as Winograd convolutions instead
(``netspec.layers.winograd``; ``winograd_tile`` says when), forward and backward.

Layout: activations (N, H, W, C), kernels (KH, KW, C, O), one group.  Anything else
goes through ``conv_general_dilated`` unchanged to ``lax.conv_general_dilated``.
"""
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from . import winograd

NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                     out_spec=(0, 3, 1, 2))


def _xla_conv(x, kernel, strides, padding, dilation):
    return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                    rhs_dilation=dilation, dimension_numbers=NHWC_HWIO)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_nhwc(x, kernel, strides, padding, dilation):
    """Cross-correlation of x (N, H, W, C) with kernel (KH, KW, C, O); strides,
    dilation: (h, w); padding: ((lo, hi), (lo, hi)).  Same result as XLA's conv.
    The kernel may be wider than x (float32 master weights in a bfloat16 pass): it is
    cast to x's type for the products, and its gradient is accumulated and returned in
    its own type, never rounded to bfloat16."""
    return _xla_conv(x, kernel.astype(x.dtype), strides, padding, dilation)


def _conv_fwd(x, kernel, strides, padding, dilation):
    return _xla_conv(x, kernel.astype(x.dtype), strides, padding, dilation), (x, kernel)


# the spatial axes of an (N, H, W, C) array, and of its channel-major (C, N, H, W) copy
NHWC_SPATIAL, CNHW_SPATIAL = (1, 2), (2, 3)


def _pad_hw(x, padding, axes=NHWC_SPATIAL):
    """x zero-padded by ``padding`` ((lo, hi), (lo, hi)) on its spatial ``axes``."""
    config = [(0, 0, 0)] * x.ndim
    for axis, (lo, hi) in zip(axes, padding):
        config[axis] = (lo, hi, 0)
    return lax.pad(x, lax.full((), 0, x.dtype), config)


def _shifted_view(xp, i, j, strides, dilation, out_hw, axes=NHWC_SPATIAL):
    """xp[.., i*dh + sh*oh, j*dw + sw*ow, ..] for all output positions (oh, ow), on the
    spatial ``axes``."""
    start, limit, step = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
    for axis, offset, stride, size in zip(axes, (i * dilation[0], j * dilation[1]), strides, out_hw):
        start[axis], limit[axis], step[axis] = offset, offset + (size - 1) * stride + 1, stride
    return lax.slice(xp, start, limit, step)


def weight_grad_gemm(x, g, kernel_hw, strides, padding, dilation):
    """d(loss)/d(kernel) as kernel-row GEMMs over the whole map; x (N, H, W, C),
    g (N, OH, OW, O).  Any padding, also negative (cropping)."""
    kh, kw = kernel_hw
    c, o = x.shape[-1], g.shape[-1]
    xp = _pad_hw(x, padding)
    out_hw = g.shape[1:3]
    dy = g.reshape(-1, o)
    rows = []
    for i in range(kh):
        views = [_shifted_view(xp, i, j, strides, dilation, out_hw) for j in range(kw)]
        patches = lax.concatenate(views, 3).reshape(-1, kw * c)
        row = lax.dot_general(patches, dy, (((0,), (0,)), ((), ())),
                              precision=lax.Precision.HIGHEST,
                              preferred_element_type=jnp.float32)
        rows.append(row.reshape(kw, c, o))
    return lax.concatenate([r[None] for r in rows], 0)


# Patch-matrix elements per block of output rows (4 MB of float32): small enough to
# stay in cache between being written and being read by the GEMM.  Measured on FCN-8s's
# VGG layers (2-core EPYC), where 2 rows of conv1_2 (698 wide, 9*64 patch columns) or
# of conv2_2 are this size; 1-4x this made no clear difference.
BLOCK_PATCH_ELEMENTS = 1_000_000


def block_rows(n, out_w, kernel_elems, out_channels):
    """Output rows per block: about BLOCK_PATCH_ELEMENTS patch elements, but at least
    twice the (KH*KW*C, O) accumulator (whose read-add-write every block pays: conv4/5
    have 2.4M-element accumulators), and at least one row."""
    target = max(BLOCK_PATCH_ELEMENTS, 2 * kernel_elems * out_channels)
    return max(1, -(-target // (n * out_w * kernel_elems)))


def _slab_weight_grad(slab_t, g_rows, kernel_hw, strides, dilation, pad_hw):
    """(KH*KW*C, O) float32 weight-gradient contribution of output rows ``g_rows``
    (N, r, OW, O) read from the input rows ``slab_t`` (C, N, rows, W), channel-major,
    which ``_pad_hw(slab_t, pad_hw, CNHW_SPATIAL)`` makes exactly the padded rows those
    outputs see.

    The patches are built transposed, (KH*KW*C, N*r*OW), so that the product is a plain
    (M, K) @ (K, N) GEMM: XLA:CPU runs that form with YNNPACK at about 180 GFLOP/s on
    the 2-core EPYC, where the (K, M)^T @ (K, N) form goes to Eigen at 95-125 GFLOP/s
    (conv1_2 of FCN-8s: 280 ms against 375 ms for the whole weight gradient)."""
    kh, kw = kernel_hw
    n, r, ow, o = g_rows.shape
    slab_t = _pad_hw(slab_t, pad_hw, CNHW_SPATIAL)
    views = [_shifted_view(slab_t, i, j, strides, dilation, (r, ow), CNHW_SPATIAL)
             for i in range(kh) for j in range(kw)]
    patches_t = lax.concatenate(views, 0).reshape(kh * kw * slab_t.shape[0], n * r * ow)
    return lax.dot_general(patches_t, g_rows.reshape(n * r * ow, o), (((1,), (0,)), ((), ())),
                           precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _edge_weight_grad(xt, g, start, stop, kernel_hw, strides, padding, dilation):
    """_slab_weight_grad for output rows [start, stop) (static), padding rows as needed;
    ``xt`` is the whole input, channel-major (C, N, H, W)."""
    h, top = xt.shape[2], padding[0][0]
    first = start * strides[0] - top
    last = first + (stop - start - 1) * strides[0] + (kernel_hw[0] - 1) * dilation[0] + 1
    slab = xt[:, :, max(first, 0):min(last, h)]
    pad_h = (max(-first, 0), max(last - h, 0))
    return _slab_weight_grad(slab, g[:, start:stop], kernel_hw, strides, dilation,
                             (pad_h, padding[1]))


def weight_grad_blocked(x, g, kernel_hw, strides, padding, dilation, rows=None):
    """d(loss)/d(kernel) as a loop over blocks of ``rows`` output rows, each one im2col
    GEMM ``P_b^T @ dY_b`` with P_b^T (KH*KW*C, N*rows*OW), accumulated in float32.

    The whole-map patch matrices of the kernel-row GEMMs are 3x-9x the input and go
    through main memory; a block's patches are written and read while in cache.  The
    input is transposed to channel-major once (one pass over it), so that each block's
    patches come out transposed, ready for the fast GEMM form (``_slab_weight_grad``).
    The loop runs over the output rows whose input rows lie inside x (no padded copy of
    x is made); the few rows at the top and bottom edges are two separate GEMMs.
    Padding amounts must be >= 0.
    """
    kh, kw = kernel_hw
    n, oh, ow, o = g.shape
    h, c = x.shape[1], x.shape[-1]
    xt = jnp.transpose(x, (3, 0, 1, 2))
    rows = min(oh, rows or block_rows(n, ow, kh * kw * c, o))
    top, span = padding[0][0], (kh - 1) * dilation[0] + 1
    inner_lo = min(oh, -(-top // strides[0]))  # first output row not reading the top pad
    inner_hi = max(inner_lo, min(oh, (h - span + top) // strides[0] + 1))
    blocks = (inner_hi - inner_lo) // rows
    in_rows = (rows - 1) * strides[0] + span
    edge = lambda a, b: _edge_weight_grad(xt, g, a, b, kernel_hw, strides, padding, dilation)
    total = jnp.zeros((kh * kw * c, o), jnp.float32)
    if inner_lo > 0:
        total = total + edge(0, inner_lo)
    if inner_lo + blocks * rows < oh:
        total = total + edge(inner_lo + blocks * rows, oh)

    def add_block(b, total):
        out_row = inner_lo + b * rows
        slab = lax.dynamic_slice_in_dim(xt, out_row * strides[0] - top, in_rows, 2)
        g_rows = lax.dynamic_slice_in_dim(g, out_row, rows, 1)
        return total + _slab_weight_grad(slab, g_rows, kernel_hw, strides, dilation,
                                         ((0, 0), padding[1]))

    if blocks:
        total = lax.fori_loop(0, blocks, add_block, total)
    return total.reshape(kh, kw, c, o)


def weight_grad_cpu(x, g, kernel_hw, strides, padding, dilation):
    """The CPU weight gradient: blocked im2col GEMMs, or kernel-row GEMMs for negative
    padding (cropping).  (The blocked GEMMs also win for few channels since their patches
    are channel-major: conv1_1's 3 channels, 42 -> 29 ms.)"""
    if min(min(p) for p in padding) < 0:
        return weight_grad_gemm(x, g, kernel_hw, strides, padding, dilation)
    return weight_grad_blocked(x, g, kernel_hw, strides, padding, dilation)


def runs_on_cpu():
    """Whether traced code will run on the CPU: the default device's platform (as
    ``netspec.set_mode_cpu/gpu`` set it) or else JAX's default backend.  Chosen at trace
    time rather than with ``lax.platform_dependent``, which lowers (and on a GPU
    autotunes) the CPU branches too: FCN-8s took 8-20 s instead of 1 s to compile."""
    device = jax.config.jax_default_device
    platform = getattr(device, "platform", device) if device is not None else jax.default_backend()
    return platform == "cpu"


def _weight_grad_xla(x, kernel, g, strides, padding, dilation):
    _, pullback = jax.vjp(lambda k: _xla_conv(x, k, strides, padding, dilation), kernel)
    return pullback(g)[0]


def _conv_bwd(strides, padding, dilation, residuals, g):
    x, kernel = residuals
    narrow = kernel.astype(x.dtype)
    _, data_pullback = jax.vjp(lambda a: _xla_conv(a, narrow, strides, padding, dilation), x)
    dx = data_pullback(g)[0]

    def on_cpu(x, kernel, g):
        dw = weight_grad_cpu(x, g, kernel.shape[:2], strides, padding, dilation)
        return dw.astype(kernel.dtype)

    def elsewhere(x, kernel, g):
        return _weight_grad_xla(x, narrow, g, strides, padding, dilation).astype(kernel.dtype)

    dw = (on_cpu if runs_on_cpu() else elsewhere)(x, kernel, g)
    return dx, dw


conv2d_nhwc.defvjp(_conv_fwd, _conv_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _im2col(xp, kernel_hw, strides, dilation, out_hw):
    """(N, OH, OW, C, KH*KW) patches of the padded input xp (N, H, W, C)."""
    kh, kw = kernel_hw
    return jnp.stack([_shifted_view(xp, i, j, strides, dilation, out_hw)
                      for i in range(kh) for j in range(kw)], axis=-1)


def _im2col_fwd(xp, kernel_hw, strides, dilation, out_hw):
    return _im2col(xp, kernel_hw, strides, dilation, out_hw), jnp.zeros((0,) + xp.shape[1:], xp.dtype)


def _im2col_bwd(kernel_hw, strides, dilation, out_hw, shape_of_xp, g):
    """col2im: each kernel offset's patch gradient added in place into its window of the
    input gradient.  (JAX's own transpose of the stack pads every offset's gradient to the
    whole map and sums the KH*KW maps inside whatever reads the result: FCN-8s's pool5
    backward then summed fc6's 49 maps once per pooling-window position, 90 ms a step.)"""
    kh, kw = kernel_hw
    dx = jnp.zeros((g.shape[0],) + shape_of_xp.shape[1:], g.dtype)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        piece = g[..., t]
        if strides != (1, 1):
            interior = [(0, 0, 0), (0, 0, strides[0] - 1), (0, 0, strides[1] - 1), (0, 0, 0)]
            piece = lax.pad(piece, lax.full((), 0, g.dtype), interior)
        start = (0, i * dilation[0], j * dilation[1], 0)
        window = lax.dynamic_slice(dx, start, piece.shape)
        dx = lax.dynamic_update_slice(dx, window + piece, start)
    return (dx,)


_im2col.defvjp(_im2col_fwd, _im2col_bwd)


def conv2d_im2col(x, kernel, strides, padding, dilation):
    """The same convolution as one GEMM of (N*OH*OW, C*KH*KW) patches with the kernel
    viewed as (O, C*KH*KW); differentiated by JAX (GEMMs and pads), the patches by
    ``_im2col``'s col2im."""
    kh, kw, c, o = kernel.shape
    xp = _pad_hw(x, padding)
    out_hw = tuple((xp.shape[1 + a] - dilation[a] * (kernel.shape[a] - 1) - 1) // strides[a] + 1
                   for a in range(2))
    if kh * kw == 1:
        patches = _shifted_view(xp, 0, 0, strides, dilation, out_hw).reshape(-1, c)
    else:   # (C, KH, KW) order
        patches = _im2col(xp, (kh, kw), strides, dilation, out_hw).reshape(-1, c * kh * kw)
    weight = jax.numpy.transpose(kernel, (3, 2, 0, 1)).reshape(o, c * kh * kw).astype(x.dtype)
    # precision: the caller's (compiler.forward: "highest"), so that a TF32 run is TF32 here too
    y = lax.dot_general(patches, weight, (((1,), (1,)), ((), ())))
    return y.reshape((x.shape[0],) + out_hw + (o,))


def _patches_fit_kernel(x, kernel, strides, padding, dilation):
    """True for 1x1 kernels and when the im2col patch matrix (N*OH*OW, KH*KW*C) has no
    more elements than the kernel (KH*KW*C, O)."""
    kh, kw, _, o = kernel.shape
    out = [(x.shape[1 + a] + sum(padding[a]) - dilation[a] * (kernel.shape[a] - 1) - 1)
           // strides[a] + 1 for a in range(2)]
    return kh * kw == 1 or x.shape[0] * out[0] * out[1] <= o


# When Winograd pays on the CPU, measured (forward + both gradients, against the direct
# path above, 2-core EPYC): F(2x2,3x3) takes 0.55-0.82x the time on maps with 128-512
# channels and at least 32 tiles (FCN-8s's conv2_2-conv5, ResNet's 14x14 stages); on
# 7x7x512 (16 tiles) transforming the 512x512 kernel costs more than the products save
# (1.8x), and on 64-channel maps it gains little or loses (56x56: 0.93x, 200x200:
# 1.04x, 710x710: 1.32x, its transformed input, 4x the input, streaming through
# memory).  F(4x4,3x3) takes 0.42-0.83x on maps with at least 32 tiles of 4x4, down to
# 32 channels, except on very large maps with few channels (710x710x64: 1.10x, whose
# input alone is 129 MB).  Few input channels (conv1_1's 3) stay direct.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_TILES = 32
WINOGRAD_WIDE_CHANNELS = 128
WINOGRAD4_MAX_NARROW_INPUT_BYTES = 64 << 20


def winograd_tile(x, kernel, strides, padding, dilation):
    """The Winograd tile size m for this convolution on the CPU (2 or 4), or None for the
    direct path.  F(4x4,3x3) only when the pass trades exactness for speed (matmul
    precision "tensorfloat32", i.e. ``--precision tf32``, or bfloat16 compute, whose
    rounding is far coarser than F(4x4,3x3)'s: computed in float32 from the bfloat16
    input, 2-3x faster than XLA's bfloat16 convolution on the CPU); F(2x2,3x3), as exact
    as the direct convolution, in full float32 (see ``netspec.layers.winograd``)."""
    if (not runs_on_cpu() or x.dtype not in (jnp.float32, jnp.bfloat16) or kernel.shape[:2] != (3, 3)
            or strides != (1, 1) or dilation != (1, 1) or min(min(p) for p in padding) < 0):
        return None
    c, o = kernel.shape[2:]
    out_h, out_w, _, _ = winograd.tile_grid(x.shape, padding, 1)
    if c < WINOGRAD_MIN_CHANNELS or out_h < 1 or out_w < 1:
        return None
    wide = min(c, o) >= WINOGRAD_WIDE_CHANNELS

    def tiles(m):
        _, _, th, tw = winograd.tile_grid(x.shape, padding, m)
        return x.shape[0] * th * tw
    if x.dtype == jnp.bfloat16 or str(jax.config.jax_default_matmul_precision).lower() == "tensorfloat32":
        if tiles(4) >= WINOGRAD_MIN_TILES and (wide or x.size * 4 <= WINOGRAD4_MAX_NARROW_INPUT_BYTES):
            return 4
    if wide and tiles(2) >= WINOGRAD_MIN_TILES:
        return 2
    return None


def _pairs(padding):
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, **kwargs):
    """``lax.conv_general_dilated`` computed with GEMMs where it applies: 2-D, NHWC
    activations, HWIO kernel, one group, explicit padding, no lhs dilation.  Small
    outputs: im2col GEMM (``conv2d_im2col``); others: XLA's convolution with the GEMM
    weight gradient (``conv2d_nhwc``).  Off the CPU both are XLA's own convolution."""
    dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1, 1)
    applies = (lhs.ndim == 4 and dimension_numbers == NHWC_HWIO and feature_group_count == 1
               and lhs_dilation in (None, (1, 1), [1, 1]) and not isinstance(padding, str)
               and not kwargs and len(dilation) == 2)
    if not applies:
        rhs = rhs.astype(lhs.dtype)
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                                        dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, **kwargs)
    strides, padding = tuple(int(s) for s in window_strides), _pairs(padding)
    tile = winograd_tile(lhs, rhs, strides, padding, dilation)
    if tile:
        return winograd.winograd_conv(lhs, rhs, padding, tile)
    if _patches_fit_kernel(lhs, rhs, strides, padding, dilation):
        # a win on the CPU only: on a GPU, XLA's convolution is about as fast and
        # compiles in a second instead of autotuning the im2col GEMMs
        if runs_on_cpu():
            return conv2d_im2col(lhs, rhs, strides, padding, dilation)
        return _xla_conv(lhs, rhs.astype(lhs.dtype), strides, padding, dilation)
    return conv2d_nhwc(lhs, rhs, strides, padding, dilation)
