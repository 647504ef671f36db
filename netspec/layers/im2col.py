"""Im2col (Caffe's ``im2col_layer.cpp``): the convolution input columns as a blob.

For a bottom (lead..., C, S_1 .. S_n) with the channel axis at ``convolution_param.axis``,
the top is (lead..., C * K_1 * .. * K_n, O_1 .. O_n): column channel
c * prod(K) + (k_1 * K_2 + k_2) * .. (channel-major, then kernel offsets in row-major
order) holds x[c, o_1 * stride_1 - pad_1 + k_1 * dilation_1, ...], zero where that
falls in the padding.  O_i = (S_i + 2 pad_i - (dilation_i (K_i - 1) + 1)) / stride_i + 1.
The backward (Caffe's col2im, summing each column's diff into its source pixel) is the
exact derivative, produced by autodiff of the padding and strided slices.
"""
import itertools

import jax.numpy as jnp
from jax import lax

from .base import Layer, register
from .vision import conv_geometry


@register("Im2col")
class Im2col(Layer):
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        cp = self.lp.convolution_param
        shape = self.bottom_shapes[0]
        self.axis = self.canonical_axis(cp.axis, len(shape))
        n = len(shape) - self.axis - 1
        if n < 1:
            raise self.error(f"needs at least one spatial axis after axis {self.axis}; bottom "
                             f"shape is {shape}")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, n)
        self.in_spatial = list(shape[self.axis + 1:])
        self.out_spatial = []
        for size, k, s, p, d in zip(self.in_spatial, self.kernel, self.stride, self.pad,
                                    self.dilation):
            span = size + 2 * p - (d * (k - 1) + 1)
            if span < 0:
                raise self.error(f"kernel {self.kernel} (dilation {self.dilation}, pad "
                                 f"{self.pad}) does not fit the bottom shape {shape}")
            self.out_spatial.append(span // s + 1)

    def top_shapes(self):
        shape = self.bottom_shapes[0]
        channels = shape[self.axis]
        for k in self.kernel:
            channels *= k
        return [tuple(shape[:self.axis]) + (channels,) + tuple(self.out_spatial)]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        a = self.axis
        config = [(0, 0, 0)] * (a + 1) + [(p, p, 0) for p in self.pad]
        xp = lax.pad(x, jnp.zeros((), x.dtype), config)
        columns = []
        for offsets in itertools.product(*[range(k) for k in self.kernel]):
            starts = [0] * (a + 1) + [o * d for o, d in zip(offsets, self.dilation)]
            limits = list(xp.shape[:a + 1]) + [
                st + (o - 1) * s + 1 for st, o, s in
                zip(starts[a + 1:], self.out_spatial, self.stride)]
            strides = [1] * (a + 1) + list(self.stride)
            columns.append(lax.slice(xp, starts, limits, strides))
        cols = jnp.stack(columns, axis=a + 1)       # (lead..., C, K, O...)
        return [cols.reshape(self.top_shapes()[0])]
