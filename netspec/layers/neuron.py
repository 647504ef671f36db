"""Neuron layers: one bottom, one top of the same shape, computed element by element.

All but PReLU work on any layout (``elementwise = True``).  Formulas and gradients
follow Caffe's ``*_layer.cpp``: where Caffe's backward is not the exact derivative of
its forward (ReLU/PReLU/ELU at 0, AbsVal at 0, Clip at its bounds, Threshold), the
forward is written so that JAX's autodiff yields Caffe's gradient.
"""
import math

import jax
import jax.numpy as jnp
from jax import lax

from ..proto import caffe_pb2
from .base import Layer, channels_last_axis, register


class _Neuron(Layer):
    """One bottom, one top of the bottom's shape."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    elementwise = True
    spatially_local = True

    def forward(self, ctx, params, bottoms):
        return [self.apply(bottoms[0])]

    def apply(self, x):
        raise NotImplementedError


def _sigmoid(x):
    """Caffe's sigmoid: 0.5 * tanh(0.5 x) + 0.5."""
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _constant_filler(value):
    filler = caffe_pb2.FillerParameter()
    filler.type = "constant"
    filler.value = value
    return filler


@register("ReLU")
class ReLU(_Neuron):
    def setup(self):
        self.negative_slope = float(self.lp.relu_param.negative_slope)

    def apply(self, x):
        # Gradient 1 for x > 0 and negative_slope for x <= 0, as Caffe.
        if self.negative_slope == 0.0:
            return jnp.where(x > 0, x, jnp.zeros_like(x))
        return jnp.where(x > 0, x, x * self.negative_slope)


@register("ELU")
class ELU(_Neuron):
    def setup(self):
        self.alpha = float(self.lp.elu_param.alpha)

    def apply(self, x):
        positive = x > 0
        # exp of the non-positive part only (no overflow); gradient alpha*exp(x) at x <= 0.
        negative = self.alpha * (jnp.exp(jnp.where(positive, jnp.zeros_like(x), x)) - 1)
        return jnp.where(positive, x, negative)


@register("Sigmoid")
class Sigmoid(_Neuron):
    def apply(self, x):
        return _sigmoid(x)


@register("TanH")
class TanH(_Neuron):
    def apply(self, x):
        return jnp.tanh(x)


@register("AbsVal")
class AbsVal(_Neuron):
    def apply(self, x):
        # |x| with gradient sign(x), which is 0 at 0 as in Caffe.
        return x * lax.stop_gradient(jnp.sign(x))


@register("BNLL")
class BNLL(_Neuron):
    def apply(self, x):
        # log(1 + exp(x)), computed without overflow; gradient sigmoid(x).
        return jnp.logaddexp(x, jnp.zeros_like(x))


@register("Power")
class Power(_Neuron):
    def setup(self):
        p = self.lp.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)

    def spatial_fill(self, index):
        # outside the image the argument is 1 (finite value and gradient for any power)
        return (1.0 - self.shift) / self.scale if self.scale != 0.0 else 0.0

    def apply(self, x):
        if self.power == 0.0 or self.power * self.scale == 0.0:
            # Caffe: y is constant there and its gradient is exactly zero.
            value = jnp.ones_like(x) if self.power == 0.0 else \
                jnp.power(jnp.full_like(x, self.shift), self.power)
            return lax.stop_gradient(value)
        z = x * self.scale + self.shift if self.scale != 1.0 else x + self.shift
        if self.power == 1.0:
            return z
        if self.power == int(self.power) and abs(self.power) <= 16:
            return lax.integer_pow(z, int(self.power))
        return jnp.power(z, self.power)


def _base_log(base, layer):
    """Natural log of the ``base`` field (-1 means e); Caffe requires base > 0."""
    if base == -1.0:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be strictly positive or -1 (for e), got {base}")
    return math.log(base)


@register("Exp")
class Exp(_Neuron):
    def setup(self):
        p = self.lp.exp_param
        log_base = _base_log(float(p.base), self)
        self.inner_scale = log_base * float(p.scale)
        self.outer_scale = 1.0 if p.shift == 0 else math.exp(log_base * float(p.shift))

    def spatial_fill(self, index):
        return 0.0      # no overflow outside the image

    def apply(self, x):
        y = jnp.exp(x * self.inner_scale)
        return y * self.outer_scale if self.outer_scale != 1.0 else y


@register("Log")
class Log(_Neuron):
    def setup(self):
        p = self.lp.log_param
        self.base_scale = 1.0 / _base_log(float(p.base), self)
        self.scale, self.shift = float(p.scale), float(p.shift)

    def spatial_fill(self, index):
        return (1.0 - self.shift) / self.scale if self.scale != 0.0 else 0.0   # log(1)

    def apply(self, x):
        z = x
        if self.scale != 1.0:
            z = z * self.scale
        if self.shift != 0.0:
            z = z + self.shift
        y = jnp.log(z)
        return y * self.base_scale if self.base_scale != 1.0 else y


@register("Threshold")
class Threshold(_Neuron):
    def setup(self):
        self.threshold = float(self.lp.threshold_param.threshold)

    def apply(self, x):
        return lax.stop_gradient((x > self.threshold).astype(x.dtype))


@register("Clip")
class Clip(_Neuron):
    def setup(self):
        p = self.lp.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param needs both min and max")
        self.low, self.high = float(p.min), float(p.max)

    def apply(self, x):
        clipped = jnp.maximum(jnp.minimum(x, self.high), self.low)
        # Gradient 1 inside [min, max] (bounds included), 0 outside, as Caffe.
        inside = (x >= self.low) & (x <= self.high)
        return jnp.where(inside, x, lax.stop_gradient(clipped))


@register("Swish")
class Swish(_Neuron):
    def setup(self):
        self.beta = float(self.lp.swish_param.beta)

    def apply(self, x):
        return x * _sigmoid(x * self.beta)


@register("Dropout")
class Dropout(_Neuron):
    """TRAIN: keep each element with probability 1-p and scale by 1/(1-p).  TEST: identity."""

    def setup(self):
        self.ratio = float(self.lp.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        if not ctx.train or self.ratio == 0.0:
            return [x]
        if ctx.rng is None:
            raise self.error("Dropout in a TRAIN pass needs a random key; pass rng to the net")
        keep = jax.random.bernoulli(ctx.rng, 1.0 - self.ratio, x.shape)
        return [x * (keep.astype(x.dtype) * self.scale)]


@register("PReLU")
class PReLU(Layer):
    """y = max(0, x) + a * min(0, x) with a learned slope per channel (axis 1) or shared."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    channels_last = True
    spatially_local = True

    def setup(self):
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"bottom must have at least 2 axes, got shape {shape}")
        self.channel_shared = bool(self.lp.prelu_param.channel_shared)
        self.channels = shape[1]

    def param_shapes(self):
        return [(1,) if self.channel_shared else (self.channels,)]

    def param_fillers(self):
        p = self.lp.prelu_param
        return [p.filler if p.HasField("filler") else _constant_filler(0.25)]

    def forward(self, ctx, params, bottoms):
        x, slope = bottoms[0], params[0].astype(bottoms[0].dtype)
        if not self.channel_shared:
            ndim = x.ndim
            axis = channels_last_axis(1, ndim) if self.channels_last else 1
            shape = [1] * ndim
            shape[axis] = self.channels
            slope = slope.reshape(shape)
        else:
            slope = slope.reshape(())
        # Gradient w.r.t. x: 1 for x > 0, a for x <= 0; w.r.t. a: x for x <= 0 (Caffe).
        return [jnp.where(x > 0, x, x * slope)]
