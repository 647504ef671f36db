"""MVN: mean-variance normalization (Caffe's ``mvn_layer.cpp``).

Each group (one (n, c) plane, or one item n with ``across_channels``) has its mean
subtracted and, with ``normalize_variance``, is divided by ``sqrt(var) + eps``
(Caffe adds eps to the standard deviation, not to the variance).

Caffe works through the legacy num/channels/height/width accessors, so the bottom
may have at most 4 axes and the top is always 4-axis: (N, C, H, W) with missing
axes 1 (a (N, C) bottom gives a (N, C, 1, 1) top).

Caffe's backward with ``normalize_variance`` is
``(dy - mean(dy) - y * mean(y * dy)) / (sqrt(var) + eps)``, which drops a factor
``(sqrt(var) + eps) / sqrt(var)`` of the exact derivative's last term; it is used
here through ``jax.custom_vjp``.  Without ``normalize_variance`` the backward,
``dy - mean(dy)``, is the exact derivative.
"""
from functools import partial

import jax
import jax.numpy as jnp

from .base import Layer, register


def _legacy_shape(shape):
    return tuple(shape) + (1,) * (4 - len(shape))


def _mvn_value(x, axes, eps):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = jnp.mean(centered * centered, axis=axes, keepdims=True)
    std = jnp.sqrt(var) + jnp.asarray(eps, x.dtype)
    return centered / std, std


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _mvn(x, axes, eps):
    return _mvn_value(x, axes, eps)[0]


def _mvn_fwd(x, axes, eps):
    y, std = _mvn_value(x, axes, eps)
    return y, (y, std)


def _mvn_bwd(axes, eps, residuals, dy):
    y, std = residuals
    mean_dy = jnp.mean(dy, axis=axes, keepdims=True)
    mean_ydy = jnp.mean(y * dy, axis=axes, keepdims=True)
    return ((dy - mean_dy - y * mean_ydy) / std,)


_mvn.defvjp(_mvn_fwd, _mvn_bwd)


@register("MVN")
class MVN(Layer):
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    float32_compute = True      # statistics

    def setup(self):
        shape = self.bottom_shapes[0]
        if len(shape) > 4:
            raise self.error(f"takes a bottom of at most 4 axes (Caffe reads it as num, channels, "
                             f"height, width), got shape {shape}")
        p = self.lp.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)
        self.shape = _legacy_shape(shape)

    def top_shapes(self):
        return [self.shape]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0].reshape(self.shape)
        axes = (1, 2, 3) if self.across_channels else (2, 3)
        if self.normalize_variance:
            return [_mvn(x, axes, self.eps)]
        return [x - jnp.mean(x, axis=axes, keepdims=True)]
