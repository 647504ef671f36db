"""Vision layers: Convolution, Deconvolution, Pooling, LRN, InnerProduct, Crop, Embed.

The spatial layers compute channels-last (N, H, W, C), where XLA is fastest; the
arithmetic (output sizes, pooling windows and divisors, tie-breaking) is Caffe's.
"""
import itertools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..proto import caffe_pb2
from .base import Layer, channels_last_axis, register
from . import conv_grad, extents as ext

PoolingParameter = caffe_pb2.PoolingParameter
LRNParameter = caffe_pb2.LRNParameter


def _shape_str(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


# ---------------------------------------------------------------------------
# Convolution and Deconvolution
# ---------------------------------------------------------------------------

def conv_geometry(layer, cp, num_spatial):
    """``(kernel, stride, pad, dilation)`` of a ``convolution_param``, one value per spatial
    axis each, checked (kernel, stride, dilation >= 1, pad >= 0)."""
    kernel = _per_axis(layer, cp, "kernel_size", num_spatial, None)
    stride = _per_axis(layer, cp, "stride", num_spatial, 1)
    pad = _per_axis(layer, cp, "pad", num_spatial, 0)
    dilation = _per_axis(layer, cp, "dilation", num_spatial, 1)
    for name, values, low in (("kernel_size", kernel, 1), ("stride", stride, 1),
                              ("dilation", dilation, 1), ("pad", pad, 0)):
        if min(values) < low:
            raise layer.error(f"{name} must be >= {low}, got {values}")
    return kernel, stride, pad, dilation


def _per_axis(layer, param, field, num_spatial, default):
    """A repeated conv field (pad/kernel_size/stride/dilation) or its _h/_w pair, one per spatial axis."""
    values = list(getattr(param, field))
    short = {"kernel_size": "kernel", "pad": "pad", "stride": "stride"}.get(field)
    has_hw = short is not None and (param.HasField(short + "_h") or param.HasField(short + "_w"))
    if has_hw:
        if num_spatial != 2:
            raise layer.error(f"{short}_h/{short}_w are only for 2-D convolution; "
                              f"this one has {num_spatial} spatial axes: use {field}")
        if values:
            raise layer.error(f"give either {field} or {short}_h and {short}_w, not both")
        if not (param.HasField(short + "_h") and param.HasField(short + "_w")):
            raise layer.error(f"give both {short}_h and {short}_w")
        return [int(getattr(param, short + "_h")), int(getattr(param, short + "_w"))]
    if not values:
        if default is None:
            raise layer.error("convolution_param needs kernel_size (or kernel_h and kernel_w)")
        return [default] * num_spatial
    if len(values) == 1:
        return [int(values[0])] * num_spatial
    if len(values) != num_spatial:
        raise layer.error(f"{field} has {len(values)} values; give 1 or one per spatial axis "
                          f"({num_spatial})")
    return [int(v) for v in values]


class _ConvolutionBase(Layer):
    """What Convolution and Deconvolution share: parameters, weights, layout handling."""

    min_bottoms, min_tops = 1, 1
    channels_last = True
    reverse = False  # Deconvolution: weight (C_in, O/group, k...)

    def setup(self):
        cp = self.lp.convolution_param
        if self.num_tops != len(self.bottom_shapes):
            raise self.error(f"needs one top per bottom, got {len(self.bottom_shapes)} bottoms "
                             f"and {self.num_tops} tops")
        shape = self.bottom_shapes[0]
        for other in self.bottom_shapes[1:]:
            if other != shape:
                raise self.error(f"all bottoms must have the same shape, got {_shape_str(shape)} "
                                 f"and {_shape_str(other)}")
        self.axis = self.canonical_axis(cp.axis, len(shape))
        self.num_spatial = len(shape) - self.axis - 1
        if self.num_spatial < 1:
            raise self.error(f"needs at least one spatial axis after axis {self.axis}; bottom "
                             f"shape is {_shape_str(shape)}")
        n = self.num_spatial
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, n)
        self.channels = shape[self.axis]
        self.num_output = int(cp.num_output)
        self.group = int(cp.group)
        self.bias_term = bool(cp.bias_term)
        if self.num_output < 1:
            raise self.error("convolution_param.num_output must be set (> 0)")
        if self.group < 1 or self.channels % self.group or self.num_output % self.group:
            raise self.error(f"group {self.group} must divide both the input channels "
                             f"({self.channels}, bottom shape {_shape_str(shape)}) and num_output "
                             f"({self.num_output})")
        self.in_spatial = list(shape[self.axis + 1:])
        self.out_spatial = [self._output_size(i) for i in range(n)]
        if min(self.out_spatial) < 1:
            raise self.error(f"kernel {self.kernel} (dilation {self.dilation}, pad {self.pad}, "
                             f"stride {self.stride}) does not fit the bottom shape "
                             f"{_shape_str(shape)}: output spatial size would be "
                             f"{self.out_spatial}")

    def _extent(self, i):
        return self.dilation[i] * (self.kernel[i] - 1) + 1

    @property
    def spatially_local(self):
        return self.axis == 1 and self.num_spatial == 2

    def spatial_fill(self, index):
        return 0.0

    def top_extents(self, bottom_extents):
        return [None if e is None else tuple(self._runtime_size(e[i], i) for i in range(2))
                for e in bottom_extents]

    def top_shapes(self):
        shape = self.bottom_shapes[0]
        top = tuple(shape[:self.axis]) + (self.num_output,) + tuple(self.out_spatial)
        return [top] * self.num_tops

    def param_shapes(self):
        if self.reverse:
            weight = (self.channels, self.num_output // self.group)
        else:
            weight = (self.num_output, self.channels // self.group)
        shapes = [weight + tuple(self.kernel)]
        if self.bias_term:
            shapes.append((self.num_output,))
        return shapes

    def param_fillers(self):
        cp = self.lp.convolution_param
        return [cp.weight_filler, cp.bias_filler][:len(self.param_shapes())]

    def forward(self, ctx, params, bottoms):
        return [self._forward_one(params, x) for x in bottoms]

    def _forward_one(self, params, x):
        x, restore = self._to_batch_spatial_channels(x)
        y = self._compute(params[0], x)
        if self.bias_term:
            y = y + params[1].astype(y.dtype)
        return restore(y)

    def _to_batch_spatial_channels(self, x):
        """View the stored bottom as (B, spatial..., C); also return the inverse for the top."""
        ndim = len(self.bottom_shapes[0])
        if self.axis == 1:
            return x, lambda y: y  # storage is already (N, spatial..., C)
        caffe = jnp.moveaxis(x, -1, 1) if ndim >= 3 else x
        lead = self.bottom_shapes[0][:self.axis]
        x = caffe.reshape((-1,) + caffe.shape[self.axis:])
        x = jnp.moveaxis(x, 1, -1)

        def restore(y):
            y = jnp.moveaxis(y, -1, 1).reshape(tuple(lead) + (self.num_output,) + y.shape[1:-1])
            return jnp.moveaxis(y, 1, -1) if ndim >= 3 else y
        return x, restore

    def _dimension_numbers(self):
        """(B, spatial..., C) activations and (spatial..., I, O) kernels."""
        n = self.num_spatial
        spatial = tuple(range(1, n + 1))
        return lax.ConvDimensionNumbers(lhs_spec=(0, n + 1) + spatial,
                                        rhs_spec=(n + 1, n) + tuple(range(n)),
                                        out_spec=(0, n + 1) + spatial)


@register("Convolution")
class Convolution(_ConvolutionBase):
    """Caffe convolution (a cross-correlation), weight (O, C/group, k...)."""

    def _output_size(self, i):
        span = self.in_spatial[i] + 2 * self.pad[i] - self._extent(i)
        return span // self.stride[i] + 1 if span >= 0 else 0

    def _runtime_size(self, size, i):
        return ext.conv_size(size, self._extent(i), self.stride[i], self.pad[i])

    def _compute(self, weight, x):
        n = self.num_spatial
        # the kernel keeps its type (float32 masters in a bf16 pass): conv_grad casts it
        kernel = jnp.transpose(weight, tuple(range(2, n + 2)) + (1, 0))
        return conv_grad.conv_general_dilated(
            x, kernel, window_strides=self.stride, padding=[(p, p) for p in self.pad],
            rhs_dilation=self.dilation, dimension_numbers=self._dimension_numbers(),
            feature_group_count=self.group)


@register("Deconvolution")
class Deconvolution(_ConvolutionBase):
    """Caffe deconvolution (the transpose of Convolution), weight (C_in, O/group, k...).

    Computed in sub-pixel form: one matrix product maps each input neighbourhood of
    A = ceil(extent/stride) positions to all stride**n output phases, which are then
    interleaved.  The zero-inserted (lhs-dilated) convolution wastes stride**n of its
    work (a lot for FCN's 64x64 stride-32 upsampling), and XLA's CPU convolutions
    with thousands of output channels are slow to differentiate; matrix products
    (forward and both gradients) are fast on every backend.
    """

    reverse = True

    def _output_size(self, i):
        return self.stride[i] * (self.in_spatial[i] - 1) + self._extent(i) - 2 * self.pad[i]

    def _runtime_size(self, size, i):
        return ext.deconv_size(size, self._extent(i), self.stride[i], self.pad[i])

    def _phase_kernel(self, weight):
        """The (group, A...*C_in/group, s...*O/group) matrices of the sub-pixel product.

        Per spatial axis the (dilated) kernel of extent K is zero-padded to A*s taps,
        A = ceil(K/s), split as (A, s) and flipped along A, so that output phase r of
        block q is sum_a x[q - A + 1 + a] * w[(A - 1 - a)*s + r].
        """
        n, g = self.num_spatial, self.group
        cin_g, out_g = self.channels // g, self.num_output // g
        config = [(0, 0, 0), (0, 0, 0)]
        for i in range(n):
            extent = self._extent(i)
            taps = -(-extent // self.stride[i]) * self.stride[i]
            config.append((0, taps - extent, self.dilation[i] - 1))
        w = lax.pad(weight, jnp.zeros((), weight.dtype), config)  # dilate, pad to A*s taps
        blocks = [w.shape[2 + i] // self.stride[i] for i in range(n)]
        split = (g, cin_g, out_g)
        for a, s in zip(blocks, self.stride):
            split += (a, s)
        w = jnp.flip(w.reshape(split), axis=tuple(3 + 2 * i for i in range(n)))
        a_axes = tuple(3 + 2 * i for i in range(n))
        s_axes = tuple(4 + 2 * i for i in range(n))
        w = jnp.transpose(w, (0,) + a_axes + (1,) + s_axes + (2,))
        return w.reshape(g, -1, int(np.prod(self.stride)) * out_g), blocks

    def _patches(self, x, blocks):
        """(group, B*Q..., A...*C_in/group): the A... neighbourhood of every block position."""
        n, g = self.num_spatial, self.group
        pad = [(0, 0, 0)] + [(a - 1, a - 1, 0) for a in blocks] + [(0, 0, 0)]
        xp = lax.pad(x, jnp.zeros((), x.dtype), pad)
        qs = [s + a - 1 for s, a in zip(x.shape[1:n + 1], blocks)]
        views = []
        for offset in itertools.product(*[range(a) for a in blocks]):
            starts = (0,) + offset + (0,)
            limits = (x.shape[0],) + tuple(o + q for o, q in zip(offset, qs)) + (x.shape[-1],)
            views.append(lax.slice(xp, starts, limits))
        p = jnp.stack(views, axis=-2)  # (B, Q..., A^n, C)
        rows = int(np.prod(p.shape[:n + 1]))
        p = p.reshape(rows, len(views), g, self.channels // g)
        return jnp.transpose(p, (2, 0, 1, 3)).reshape(g, rows, -1), qs

    def _compute(self, weight, x):
        n, g = self.num_spatial, self.group
        kernel, blocks = self._phase_kernel(weight.astype(x.dtype))
        patches, qs = self._patches(x, blocks)
        z = lax.dot_general(patches, kernel, (((2,), (1,)), ((0,), (0,))))  # (g, rows, s^n*O/g)
        # (g, B, Q..., s..., O/g) -> (B, Q1, s1, Q2, s2, ..., g, O/g): interleave the phases
        batch = x.shape[0]
        z = z.reshape((g, batch) + tuple(qs) + tuple(self.stride) + (self.num_output // g,))
        order = [1]
        for i in range(n):
            order += [2 + i, 2 + n + i]
        order += [0, 2 + 2 * n]
        z = jnp.transpose(z, order)
        z = z.reshape((batch,) + tuple(q * s for q, s in zip(qs, self.stride))
                      + (self.num_output,))
        starts = (0,) + tuple(self.pad) + (0,)
        limits = (batch,) + tuple(p + o for p, o in zip(self.pad, self.out_spatial)) \
            + (self.num_output,)
        return lax.slice(z, starts, limits)


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

def _pad_hw(x, pads, value):
    """Pad (or crop, for negative amounts) axes 1 and 2 of an (N, H, W, C) array."""
    config = [(0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)]
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def _windows(xp, kernel, strides, out_hw):
    """For each window offset (i, j) in row-major order, the strided view x[i + s*oh, j + s*ow]."""
    n, _, _, c = xp.shape
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            limit = (n, i + (out_hw[0] - 1) * strides[0] + 1,
                     j + (out_hw[1] - 1) * strides[1] + 1, c)
            yield i, j, lax.slice(xp, (0, i, j, 0), limit, (1, strides[0], strides[1], 1))


def _max_value(x, kernel, strides, pads):
    """Window maxima of the in-image cells; Caffe starts each top at -FLT_MAX, so a window
    with no image cell (ceil overhang when stride > kernel) gives -FLT_MAX, not -inf."""
    xp = _pad_hw(x, pads, -jnp.inf)
    y = lax.reduce_window(xp, np.array(-np.inf, x.dtype), lax.max,
                          (1,) + tuple(kernel) + (1,), (1,) + tuple(strides) + (1,), "VALID")
    return jnp.maximum(y, jnp.asarray(-jnp.finfo(x.dtype).max, x.dtype))


def _first_max_hits(x, y, kernel, strides, pads):
    """Yield (i, j, hit): hit marks outputs whose FIRST maximum (row-major) is at offset (i, j)."""
    xp = _pad_hw(x, pads, -jnp.inf)
    taken = jnp.zeros(y.shape, bool)
    for i, j, window in _windows(xp, kernel, strides, y.shape[1:3]):
        hit = (window == y) & ~taken
        taken = taken | hit
        yield i, j, hit


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, kernel, strides, pads):
    """Max pooling over axes 1, 2; the gradient goes to the first maximum only (Caffe)."""
    return _max_value(x, kernel, strides, pads)


def _max_pool_fwd(x, kernel, strides, pads):
    y = _max_value(x, kernel, strides, pads)
    return y, (x, y)


def _max_pool_bwd(kernel, strides, pads, residuals, g):
    x, y = residuals
    n, hp, wp, c = x.shape[0], x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1]), x.shape[3]
    oh, ow = y.shape[1:3]
    grad = jnp.zeros((n, hp, wp, c), g.dtype)
    zero = jnp.zeros((), g.dtype)
    for i, j, hit in _first_max_hits(x, y, kernel, strides, pads):
        contribution = jnp.where(hit, g, zero)
        high_h = hp - i - (oh - 1) * strides[0] - 1
        high_w = wp - j - (ow - 1) * strides[1] - 1
        grad = grad + lax.pad(contribution, zero, [(0, 0, 0), (i, high_h, strides[0] - 1),
                                                   (j, high_w, strides[1] - 1), (0, 0, 0)])
    unpad = ((-pads[0][0], -pads[0][1]), (-pads[1][0], -pads[1][1]))
    return (_pad_hw(grad, unpad, 0),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _max_pool_mask(x, y, kernel, strides, pads, width):
    """Caffe's mask top: the flat index h*W + w of each window's first maximum (as floats);
    ``width`` is the bottom's true width (a runtime value in a padded pass)."""
    oh, ow = y.shape[1:3]
    rows = np.arange(oh) * strides[0] - pads[0][0]
    cols = np.arange(ow) * strides[1] - pads[1][0]
    mask = jnp.full(y.shape, -1, x.dtype)
    for i, j, hit in _first_max_hits(x, y, kernel, strides, pads):
        if isinstance(width, int):
            index = jnp.asarray(((rows[:, None] + i) * width + cols[None, :] + j).astype(np.float64), x.dtype)
        else:
            index = ((rows[:, None] + i) * width + cols[None, :] + j).astype(x.dtype)
        mask = jnp.where(hit, index[None, :, :, None], mask)
    return lax.stop_gradient(mask)


def _ave_divisor(in_hw, out_hw, kernel, strides, pads):
    """Caffe's AVE pool_size per output cell: padding counts, overhang beyond it does not."""
    sizes = []
    for size_in, size_out, k, s, p in zip(in_hw, out_hw, kernel, strides, pads):
        start = np.arange(size_out) * s - p
        end = np.minimum(start + k, size_in + p)
        sizes.append(end - start)
    return np.outer(sizes[0], sizes[1])


def _ave_pool(x, kernel, strides, pads, out_hw, extent=None):
    """Caffe AVE pooling on (N, H, W, C); ``pads`` are the symmetric pad amounts (ph, pw).
    ``extent``: the input's true (h, w) in a padded pass (cells outside it must be 0);
    the divisors follow it."""
    in_hw = x.shape[1:3]
    config = [(p, (o - 1) * s + k - i - p) for i, o, k, s, p in
              zip(in_hw, out_hw, kernel, strides, pads)]
    xp = _pad_hw(x, config, 0)
    total = lax.reduce_window(xp, np.array(0, x.dtype), lax.add, (1,) + tuple(kernel) + (1,),
                              (1,) + tuple(strides) + (1,), "VALID")
    if extent is None:
        divisor = jnp.asarray(_ave_divisor(in_hw, out_hw, kernel, strides, pads), x.dtype)
    else:
        divisor = ext.ave_pool_divisor(extent, out_hw, kernel, strides, pads).astype(x.dtype)
    return total / divisor[None, :, :, None]


def _hw_pair(layer, param, field, default):
    """Caffe's `x` or `x_h` + `x_w` for pooling_param (kernel_size, pad, stride)."""
    short = "kernel" if field == "kernel_size" else field
    has_h, has_w = param.HasField(short + "_h"), param.HasField(short + "_w")
    if has_h or has_w:
        if param.HasField(field):
            raise layer.error(f"give either {field} or {short}_h and {short}_w, not both")
        if not (has_h and has_w):
            raise layer.error(f"give both {short}_h and {short}_w")
        return int(getattr(param, short + "_h")), int(getattr(param, short + "_w"))
    if default is None and not param.HasField(field):
        raise layer.error("pooling_param needs kernel_size (or kernel_h and kernel_w) "
                          "unless global_pooling is true")
    value = int(getattr(param, field))
    return value, value


def _pooled_size(size, kernel, stride, pad, ceil_mode, any_pad):
    """Caffe's pooled output size, including the rule dropping a window that starts in the padding.

    Caffe applies that rule to both axes as soon as either has padding (``any_pad``).
    """
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil_mode else math.floor(span / stride)) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register("Pooling")
class Pooling(Layer):
    """Caffe MAX / AVE pooling (STOCHASTIC is not supported); MAX may have a mask top."""

    min_bottoms = max_bottoms = 1
    min_tops, max_tops = 1, 2
    channels_last = True

    def setup(self):
        pp = self.lp.pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-axis (N, C, H, W) bottom, got shape {_shape_str(shape)}")
        self.method = pp.pool
        if self.method == PoolingParameter.STOCHASTIC:
            raise self.error("STOCHASTIC pooling is not supported; use MAX or AVE")
        if self.num_tops == 2 and self.method != PoolingParameter.MAX:
            raise self.error("only MAX pooling has a second (mask) top")
        height, width = shape[2:]
        if pp.global_pooling:
            if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
                raise self.error("with global_pooling: true the kernel size cannot be given")
            self.kernel = (height, width)
        else:
            self.kernel = _hw_pair(self, pp, "kernel_size", None)
        self.pad = _hw_pair(self, pp, "pad", 0)
        self.stride = _hw_pair(self, pp, "stride", 1)
        if pp.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("with global_pooling: true only pad 0 and stride 1 are allowed, got "
                             f"pad {self.pad} and stride {self.stride}")
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise self.error(f"kernel {self.kernel} and stride {self.stride} must be >= 1")
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        ceil_mode = pp.round_mode == PoolingParameter.CEIL
        self.out_hw = tuple(_pooled_size(s, k, st, p, ceil_mode, any(self.pad)) for s, k, st, p in
                            zip((height, width), self.kernel, self.stride, self.pad))
        if min(self.out_hw) < 1:
            raise self.error(f"kernel {self.kernel} with pad {self.pad} does not fit the bottom "
                             f"shape {_shape_str(shape)}")

    def top_shapes(self):
        n, c = self.bottom_shapes[0][:2]
        return [(n, c) + self.out_hw] * self.num_tops

    @property
    def spatially_local(self):
        return not self.lp.pooling_param.global_pooling

    def spatial_fill(self, index):
        return -np.inf if self.method == PoolingParameter.MAX else 0.0

    def top_extents(self, bottom_extents):
        e = bottom_extents[0]
        if e is None:
            return [None] * self.num_tops
        ceil_mode = self.lp.pooling_param.round_mode == PoolingParameter.CEIL
        out = tuple(ext.pooled_size(size, k, s, p, ceil_mode, any(self.pad))
                    for size, k, s, p in zip(e, self.kernel, self.stride, self.pad))
        return [out] * self.num_tops

    def _max_pads(self, in_hw):
        """(low, high) padding per spatial axis so the windows exactly tile the padded input."""
        return tuple((p, (o - 1) * s + k - i - p) for i, o, k, s, p in
                     zip(in_hw, self.out_hw, self.kernel, self.stride, self.pad))

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        if self.method == PoolingParameter.AVE:
            return [_ave_pool(x, self.kernel, self.stride, self.pad, self.out_hw, ctx.extent(0))]
        pads = self._max_pads(x.shape[1:3])
        y = _max_pool(x, tuple(self.kernel), tuple(self.stride), pads)
        if self.num_tops == 1:
            return [y]
        width = x.shape[2] if ctx.extent(0) is None else ctx.extent(0)[1]
        mask = _max_pool_mask(x, lax.stop_gradient(y), self.kernel, self.stride, pads, width)
        return [y, mask]


# ---------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------

@register("LRN")
class LRN(Layer):
    """Local response normalization across channels or within each channel."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    channels_last = True

    def setup(self):
        p = self.lp.lrn_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-axis (N, C, H, W) bottom, got shape {_shape_str(shape)}")
        self.size = int(p.local_size)
        if self.size < 1 or self.size % 2 == 0:
            raise self.error(f"local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.across = p.norm_region == LRNParameter.ACROSS_CHANNELS

    spatially_local = True
    float32_compute = True      # a power of a sum of squares

    def spatial_fill(self, index):
        return None if self.across else 0.0

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        half = (self.size - 1) // 2
        square = x * x
        if self.across:
            window_sum = lax.reduce_window(
                square, np.array(0, x.dtype), lax.add, (1, 1, 1, self.size), (1, 1, 1, 1),
                [(0, 0), (0, 0), (0, 0), (half, half)])
            scale = self.k + (self.alpha / self.size) * window_sum
        else:
            # Caffe builds this from Power, AVE Pooling (pad (n-1)/2, stride 1), Power layers:
            # (1 + alpha * avgpool(x^2))^-beta; k is not used.
            pooled = _ave_pool(square, (self.size,) * 2, (1, 1), (half, half), x.shape[1:3],
                               ctx.extent(0))
            scale = 1 + self.alpha * pooled
        return [x * scale ** jnp.asarray(-self.beta, x.dtype)]


# ---------------------------------------------------------------------------
# InnerProduct, Crop, Embed
# ---------------------------------------------------------------------------

@register("InnerProduct")
class InnerProduct(Layer):
    """y = x W^T + b over the axes from ``axis`` on, flattened in Caffe (C, H, W) order."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        p = self.lp.inner_product_param
        shape = self.bottom_shapes[0]
        self.axis = self.canonical_axis(p.axis, len(shape))
        self.num_output = int(p.num_output)
        if self.num_output < 1:
            raise self.error("inner_product_param.num_output must be set (> 0)")
        self.bias_term, self.transpose = bool(p.bias_term), bool(p.transpose)
        self.k = int(np.prod(shape[self.axis:], dtype=np.int64))

    def top_shapes(self):
        return [tuple(self.bottom_shapes[0][:self.axis]) + (self.num_output,)]

    def param_shapes(self):
        weight = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        return [weight, (self.num_output,)] if self.bias_term else [weight]

    def param_fillers(self):
        p = self.lp.inner_product_param
        return [p.weight_filler, p.bias_filler][:len(self.param_shapes())]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        lead = self.bottom_shapes[0][:self.axis]
        flat = x.reshape((-1, self.k))
        weight = params[0].astype(x.dtype)
        y = flat @ weight if self.transpose else flat @ weight.T
        if self.bias_term:
            y = y + params[1].astype(x.dtype)
        return [y.reshape(tuple(lead) + (self.num_output,))]


@register("Crop")
class Crop(Layer):
    """Crop bottom 0 to bottom 1's size on the axes from ``axis`` on, at the given offsets."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1
    channels_last = True

    def setup(self):
        p = self.lp.crop_param
        big, ref = self.bottom_shapes
        if len(big) != len(ref):
            raise self.error(f"both bottoms need the same number of axes, got {_shape_str(big)} "
                             f"and {_shape_str(ref)}")
        self.axis = self.canonical_axis(p.axis, len(big))
        cropped = len(big) - self.axis
        offsets = [int(o) for o in p.offset]
        if not offsets:
            offsets = [0] * cropped
        elif len(offsets) == 1:
            offsets = offsets * cropped
        elif len(offsets) != cropped:
            raise self.error(f"crop_param.offset has {len(offsets)} values; give 1 or one per "
                             f"cropped axis ({cropped}, axes {self.axis}..{len(big) - 1})")
        self.starts = [0] * self.axis + offsets
        self.out_shape = tuple(big[:self.axis]) + tuple(ref[self.axis:])
        for i in range(self.axis, len(big)):
            if self.starts[i] + ref[i] > big[i]:
                raise self.error(f"cannot crop {_shape_str(big)} to {_shape_str(ref)} at offsets "
                                 f"{offsets} from axis {self.axis}: axis {i} is too small")

    def top_shapes(self):
        return [self.out_shape]

    spatially_local = True   # fixed offsets: the crop moves with the image

    def top_extents(self, bottom_extents):
        if len(self.out_shape) != 4:
            return [None]
        big, ref = bottom_extents
        big = big if big is not None else self.bottom_shapes[0][2:]
        ref = ref if ref is not None else self.bottom_shapes[1][2:]
        return [tuple(ref[i] if self.axis <= 2 + i else big[i] for i in range(2))]

    def forward(self, ctx, params, bottoms):
        ndim = len(self.out_shape)
        starts, limits = [0] * ndim, [0] * ndim
        for axis in range(ndim):
            where = channels_last_axis(axis, ndim)
            starts[where] = self.starts[axis]
            limits[where] = self.starts[axis] + self.out_shape[axis]
        return [lax.slice(bottoms[0], starts, limits)]


@register("Embed")
class Embed(Layer):
    """Rows of W (input_dim, num_output) picked by integer-valued bottoms, plus bias.

    Caffe aborts on an index outside [0, input_dim); here indices are truncated to
    integers and clamped into that range.  No gradient flows to the bottom (as Caffe).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        p = self.lp.embed_param
        self.num_output, self.input_dim = int(p.num_output), int(p.input_dim)
        if self.num_output < 1 or self.input_dim < 1:
            raise self.error("embed_param needs num_output > 0 and input_dim > 0, got "
                             f"{self.num_output} and {self.input_dim}")
        self.bias_term = bool(p.bias_term)

    def top_shapes(self):
        return [tuple(self.bottom_shapes[0]) + (self.num_output,)]

    def param_shapes(self):
        weight = (self.input_dim, self.num_output)
        return [weight, (self.num_output,)] if self.bias_term else [weight]

    def param_fillers(self):
        p = self.lp.embed_param
        return [p.weight_filler, p.bias_filler][:len(self.param_shapes())]

    def forward(self, ctx, params, bottoms):
        index = lax.stop_gradient(bottoms[0]).astype(jnp.int32)
        index = jnp.clip(index, 0, self.input_dim - 1)
        y = jnp.take(params[0], index, axis=0)
        if self.bias_term:
            y = y + params[1]
        return [y]
