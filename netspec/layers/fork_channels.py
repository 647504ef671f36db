"""Channel-wise layers from Caffe's forks: ShuffleChannel, Axpy, ReLU6, and the depthwise
convolutions (DepthwiseConvolution, ConvolutionDepthwise).

Each follows its fork's layer ``.cpp`` (cited per class).
"""

import jax
import jax.numpy as jnp

from ..proto import caffe_pb2
from .base import Layer, channels_last_axis, count, register
from .vision import Convolution


def _shape_str(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


# ---------------------------------------------------------------------------
# ShuffleChannel
# ---------------------------------------------------------------------------

@register("ShuffleChannel")
class ShuffleChannel(Layer):
    """ShuffleNet's channel shuffle (farmingyard/ShuffleNet ``shuffle_channel_layer.cpp``).

    With g = ``shuffle_channel_param.group`` (default 1) and C = g * k: top channel
    j * g + i = bottom channel i * k + j (i < g, j < k), i.e. view the channels as
    (g, k), transpose to (k, g) and flatten.  The backward is the inverse permutation
    (the fork's Backward_cpu runs the same copy with g and k swapped).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    channels_last = True
    spatially_local = True

    def setup(self):
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom with a channel axis, got shape {_shape_str(shape)}")
        self.group = int(self.lp.shuffle_channel_param.group)
        if self.group < 1:
            raise self.error(f"group must be > 0, got {self.group}")
        if shape[1] % self.group:
            raise self.error(f"group {self.group} must divide the channels ({shape[1]}, bottom "
                             f"shape {_shape_str(shape)})")

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        axis = channels_last_axis(1, x.ndim)
        c = x.shape[axis]
        split = x.shape[:axis] + (self.group, c // self.group) + x.shape[axis + 1:]
        y = jnp.swapaxes(x.reshape(split), axis, axis + 1)
        return [y.reshape(x.shape)]


# ---------------------------------------------------------------------------
# Axpy
# ---------------------------------------------------------------------------

@register("Axpy")
class Axpy(Layer):
    """SENet's Axpy (hujie-frank/SENet ``src/caffe/layers/axpy_layer.cpp``): bottoms a
    (N, C) or (N, C, 1, 1), x and y of one shape (N, C, ...): top = a * x + y, a scaling
    each (n, c) plane of x.  Gradients (the fork's, all exact): da = sum over the plane of
    dtop * x, dx = a * dtop, dy = dtop.
    """

    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 1
    channels_last = True

    def setup(self):
        a, x, y = self.bottom_shapes
        if len(a) < 2 or len(x) < 2 or a[:2] != x[:2]:
            raise self.error(f"bottom 0 (the scale) must be (N, C) or (N, C, 1, 1) with bottom "
                             f"1's N and C, got {_shape_str(a)} and {_shape_str(x)}")
        if count(a) != a[0] * a[1]:
            raise self.error(f"bottom 0 (the scale) must have one value per (n, c): (N, C) or "
                             f"(N, C, 1, 1), got {_shape_str(a)}")
        if x != y:
            raise self.error(f"bottoms 1 and 2 (x and y) must have one shape, got {_shape_str(x)} "
                             f"and {_shape_str(y)}")

    def top_shapes(self):
        return [self.bottom_shapes[1]]

    def forward(self, ctx, params, bottoms):
        a, x, y = bottoms
        n, c = self.bottom_shapes[1][:2]
        a = a.reshape(n, c)               # (N, 1, 1, C) storage and (N, C) alike
        if x.ndim >= 3:                    # channels-last storage: (N, ..., C)
            a = a.reshape((n,) + (1,) * (x.ndim - 2) + (c,))
        return [a * x + y]


# ---------------------------------------------------------------------------
# ReLU6
# ---------------------------------------------------------------------------

_HAS_RELU6_PARAM = "relu6_param" in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name


@register("ReLU6")
class ReLU6(Layer):
    """ReLU6 as eric612/MobileNet-YOLO ``src/caffe/layers/relu6_layer.cpp`` (used by its
    MobileNet-v2/v3 YOLO prototxts): y = min(max(x, 0) + slope * min(x, 0), 6), gradient
    dy * ((x > 0) + slope * (x <= 0)) * (x < 6).  ``slope`` is that fork's
    ``relu6_param.negative_slope`` (a ReLUParameter); netspec's schema has no
    ``relu6_param``, so slope is 0 (no published prototxt of the fork sets it).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    elementwise = True
    spatially_local = True

    def setup(self):
        self.negative_slope = 0.0
        if _HAS_RELU6_PARAM and self.lp.HasField("relu6_param"):
            self.negative_slope = float(self.lp.relu6_param.negative_slope)

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        six = jnp.asarray(6.0, x.dtype)
        # gradient 1 for x > 0, slope for x <= 0 (as Caffe's ReLU)
        base = jnp.where(x > 0, x, x * self.negative_slope) if self.negative_slope \
            else jnp.where(x > 0, x, jnp.zeros_like(x))
        capped = base - jax.lax.stop_gradient(jnp.maximum(base - six, 0))   # min(base, 6)
        return [jnp.where(x < six, capped, six)]                          # gradient 0 at x >= 6


# ---------------------------------------------------------------------------
# Depthwise convolution
# ---------------------------------------------------------------------------

@register("DepthwiseConvolution", "ConvolutionDepthwise")
class DepthwiseConvolution(Convolution):
    """A Convolution with group = channels = num_output: weight (C, 1, kh, kw), bias (C,).

    ``DepthwiseConvolution``: eric612/MobileNet-YOLO ``src/caffe/layers/depthwise_conv_layer.cpp``
    (and ``.cu``): a BaseConvolutionLayer whose CPU path is the
    ordinary grouped convolution and whose GPU kernel assumes one filter per channel; its
    prototxts give ``group`` = ``num_output`` = channels.
    ``ConvolutionDepthwise``: farmingyard/caffe-mobilenet ``conv_dw_layer.cpp`` (used by
    farmingyard/ShuffleNet): ignores ``group``, top channels = bottom channels, weight
    (C, 1, kh, kw), bias (C,); its prototxts give ``num_output`` = channels.

    Here both: ``group`` unset is taken as the channel count; ``group`` or ``num_output``
    set to anything else is an error (the forks would compute something else or fail).
    """

    def setup(self):
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom with a channel axis, got shape {_shape_str(shape)}")
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(self.lp)
        cp = lp.convolution_param
        axis = self.canonical_axis(cp.axis, len(shape))
        channels = shape[axis]
        for field in ("group", "num_output"):
            if cp.HasField(field) and getattr(cp, field) != channels:
                raise self.error(f"a depthwise convolution has {field} = channels ({channels}, "
                                 f"bottom shape {_shape_str(shape)}), got {getattr(cp, field)}")
        cp.group = channels
        cp.num_output = channels
        self.lp = lp
        super().setup()
