"""``BN``: the batch normalization layer of two forks, PSPNet's and SegNet's.

Both forks call their layer "BN" and their ``bn_param`` messages share no field name, so
the merged ``bn_param`` (``protos/caffe.proto``) tells them apart.  Rule (decided from
the layer's prototxt only, before any weights are seen):

* SegNet's (alexgkendall/caffe-segnet) when ``bn_param`` sets ``bn_mode``,
  ``scale_filler`` or ``shift_filler``, or the layer has more than one top (only SegNet's
  BN has batch mean / variance tops).  Every published SegNet / Bayesian SegNet /
  ENet-on-caffe-segnet prototxt sets scale_filler and shift_filler (inference files
  also ``bn_mode: INFERENCE``).
* PSPNet's (hszhao/PSPNet) otherwise: its files set slope_filler, bias_filler,
  momentum and frozen; a BN with no ``bn_param`` at all is PSPNet's (4 blobs).
* Fields of both forks in one layer: an error.

A caffemodel's blob count then has to fit (PSPNet: 4 blobs (1, C, 1, 1): slope, bias,
mean, variance; SegNet: 2 blobs (1, C, 1, 1): scale, shift), else loading says so.
"""
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from ..proto import caffe_pb2
from .base import Layer, channels_last_axis, register

_SEGNET_FIELDS = ("bn_mode", "scale_filler", "shift_filler")
_PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
_INFERENCE = caffe_pb2.BNParameter.INFERENCE
_SEGNET_EPS = 1e-9          # caffe-segnet bn_layer.cpp: var_eps_ = 1e-9 (no field)


def _pspnet_test_value(x, slope, bias, mean, var, eps, axes):
    inv_std = lax.rsqrt(var + eps)
    return ((x - mean) * inv_std) * slope + bias


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _pspnet_test(x, slope, bias, mean, var, eps, axes):
    """PSPNet BN with stored statistics, not frozen (TEST phase): the fork's Backward_cpu
    still runs its batch-statistics formula on the normalized input."""
    return _pspnet_test_value(x, slope, bias, mean, var, eps, axes)


def _pspnet_test_fwd(x, slope, bias, mean, var, eps, axes):
    inv_std = lax.rsqrt(var + eps)
    x_norm = (x - mean) * inv_std
    return x_norm * slope + bias, (x_norm, inv_std, slope, mean, var)


def _pspnet_test_bwd(eps, axes, residuals, dy):
    x_norm, inv_std, slope, mean, var = residuals
    d_norm = dy * slope
    m = 1
    for a in axes:
        m *= dy.shape[a]
    sum_d = jnp.sum(d_norm, axis=axes, keepdims=True)
    sum_xd = jnp.sum(x_norm * d_norm, axis=axes, keepdims=True)
    dx = (d_norm - (x_norm * sum_xd + sum_d) / m) * inv_std
    d_slope = jnp.sum(x_norm * dy, axis=axes, keepdims=True)
    d_bias = jnp.sum(dy, axis=axes, keepdims=True)
    return dx, d_slope, d_bias, jnp.zeros_like(mean), jnp.zeros_like(var)


_pspnet_test.defvjp(_pspnet_test_fwd, _pspnet_test_bwd)


@register("BN")
class BN(Layer):
    """PSPNet's or SegNet's ``BN`` (see the module docstring for which).

    PSPNet (hszhao/PSPNet ``src/caffe/layers/bn_layer.cpp``): blobs slope, bias (learned)
    and moving mean, moving variance (statistics, lr_mult 0), all (1, C, 1, 1).
    With ``frozen: true`` or in a TEST pass: y = slope * (x - mean) * (var + eps)^-1/2 + bias
    (eps inside the square root).  In a TRAIN pass, not frozen: the batch mean and biased
    batch variance over (N, H, W) normalize x, and the stored ones become
    momentum * stored + (1 - momentum) * batch (no unbiasing).  Backward: frozen: dy *
    slope / std to the bottom and nothing to slope and bias (the fork returns before
    their diffs, and forces their lr_mult/decay_mult to 0 -- netspec stops their
    gradient; give decay_mult 0 in the prototxt too, as PSPNet's files do); TRAIN: the
    exact derivative; TEST, not frozen: the fork's batch formula on the stored-statistics
    normalization (a custom VJP).  The fork initializes the variance to 1 when frozen;
    netspec's statistics start at 0 (load weights).

    SegNet (alexgkendall/caffe-segnet ``src/caffe/layers/bn_layer.cpp``): blobs scale,
    shift (1, C, 1, 1); no stored statistics.  ``bn_mode: LEARN`` (default), in every
    phase: batch mean E[x] and variance E[x^2] - E[x]^2 over (N, H, W),
    y = scale * (x - mean) / sqrt(var + 1e-9) + shift; optional tops 1 and 2 are the batch
    mean and variance (1, C, 1, 1) and get no gradient.  ``bn_mode: INFERENCE``:
    y = scale * x + shift (SegNet's compute_bn_statistics.py folds the statistics into
    scale and shift).  Gradients are the exact derivatives (which the fork's are).
    """

    min_bottoms = max_bottoms = 1
    min_tops, max_tops = 1, 3
    channels_last = True
    float32_compute = True

    def setup(self):
        p = self.lp.bn_param
        shape = self.bottom_shapes[0]
        if not 2 <= len(shape) <= 4:
            raise self.error(f"needs a bottom of 2 to 4 axes (N, C, H, W), got shape {shape}")
        segnet = [f for f in _SEGNET_FIELDS if p.HasField(f)]
        pspnet = [f for f in _PSPNET_FIELDS if p.HasField(f)]
        if segnet and pspnet:
            raise self.error(f"bn_param mixes SegNet's fields ({', '.join(segnet)}) and PSPNet's "
                             f"({', '.join(pspnet)}); a BN layer is one fork's or the other's")
        self.segnet = bool(segnet) or self.num_tops > 1
        if self.segnet and pspnet:
            raise self.error(f"only SegNet's BN has more than one top, but bn_param sets PSPNet's "
                             f"{', '.join(pspnet)}")
        if not self.segnet and self.num_tops > 1:
            raise self.error("PSPNet's BN has one top")
        self.channels = shape[1]
        self.inference = self.segnet and p.bn_mode == _INFERENCE
        if self.inference and self.num_tops > 1:
            raise self.error("bn_mode: INFERENCE computes no batch statistics: give one top")
        self.frozen = bool(p.frozen)
        self.momentum = float(p.momentum)
        self.eps = float(p.eps)

    def _blob_shape(self):
        return (1, self.channels, 1, 1)

    def top_shapes(self):
        return [self.bottom_shapes[0]] + [self._blob_shape()] * (self.num_tops - 1)

    def param_shapes(self):
        return [self._blob_shape()] * 2

    def param_fillers(self):
        p = self.lp.bn_param
        if self.segnet:
            return [p.scale_filler, p.shift_filler]
        return [p.slope_filler, p.bias_filler]

    def state_shapes(self):
        return [] if self.segnet else [self._blob_shape()] * 2

    @property
    def spatially_local(self):
        return self.inference or (not self.segnet and self.frozen)

    # -- helpers
    def _layout(self, x):
        ndim = x.ndim
        axis = channels_last_axis(1, ndim)
        per_channel = [1] * ndim
        per_channel[axis] = self.channels
        return tuple(a for a in range(ndim) if a != axis), tuple(per_channel)

    def _per_channel(self, blob, shape, x):
        return blob.reshape(shape).astype(x.dtype)

    def _stats_top(self, values, x):
        """A (1, C, 1, 1) statistics top in the stored layout."""
        return lax.stop_gradient(values.reshape(1, 1, 1, self.channels).astype(x.dtype))

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        axes, shape = self._layout(x)
        a, b = (self._per_channel(v, shape, x) for v in params)
        if self.segnet:
            return self._segnet(x, a, b, axes)
        return [self._pspnet(ctx, x, a, b, axes, shape)]

    def _segnet(self, x, scale, shift, axes):
        if self.inference:
            return [x * scale + shift]
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(x * x, axis=axes, keepdims=True) - mean * mean
        x_norm = (x - mean) / jnp.sqrt(var + _SEGNET_EPS)
        tops = [x_norm * scale + shift]
        if self.num_tops > 1:
            tops.append(self._stats_top(mean, x))
        if self.num_tops > 2:
            tops.append(self._stats_top(var, x))
        return tops

    def _pspnet(self, ctx, x, slope, bias, axes, shape):
        if self.frozen or not ctx.train:
            if len(ctx.state) != 2:
                raise self.error("needs its 2 statistics blobs (moving mean, moving variance)")
            stored_mean, stored_var = (lax.stop_gradient(self._per_channel(s, shape, x))
                                       for s in ctx.state)
            if self.frozen:
                slope, bias = lax.stop_gradient(slope), lax.stop_gradient(bias)
                return _pspnet_test_value(x, slope, bias, stored_mean, stored_var, self.eps, axes)
            return _pspnet_test(x, slope, bias, stored_mean, stored_var, self.eps, axes)
        mean = jnp.mean(x, axis=axes, keepdims=True)
        centered = x - mean
        var = jnp.mean(centered * centered, axis=axes, keepdims=True)
        if ctx.state:
            self._update_state(ctx, mean, var)
        return centered * lax.rsqrt(var + self.eps) * slope + bias

    def _update_state(self, ctx, mean, var):
        m = self.momentum
        old_mean, old_var = ctx.state
        ctx.set_state([
            (1 - m) * lax.stop_gradient(mean).reshape(old_mean.shape).astype(old_mean.dtype)
            + m * old_mean,
            (1 - m) * lax.stop_gradient(var).reshape(old_var.shape).astype(old_var.dtype)
            + m * old_var,
        ])
