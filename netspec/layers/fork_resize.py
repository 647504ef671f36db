"""Resizing layers from Caffe's forks: Interp (PSPNet), Upsample (SegNet / YOLOv3 ports), Reorg.

Each follows its fork's layer ``.cpp`` (cited per class): output sizes, arithmetic and
backward.  Their parameters live in the fork messages of ``protos/caffe.proto``
(``interp_param``, ``upsample_param``, ``reorg_param``, at netspec's private field numbers;
prototxts name them, so the forks' text files parse unchanged).
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .base import Layer, register


def _shape_str(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _need_4_axes(layer, index=0, what="bottom"):
    shape = layer.bottom_shapes[index]
    if len(shape) != 4:
        raise layer.error(f"needs a 4-axis (N, C, H, W) {what}, got shape {_shape_str(shape)}")
    return shape


# ---------------------------------------------------------------------------
# Interp
# ---------------------------------------------------------------------------

def _interp_axis(size_in, size_out):
    """One axis of ``caffe_cpu_interp2``: per output position, the source index, whether a
    next source exists (0/1) and the two weights, in the fork's float32 arithmetic."""
    if size_out > 1:
        ratio = np.float32(size_in - 1) / np.float32(size_out - 1)
    else:
        ratio = np.float32(0.0)
    pos = ratio * np.arange(size_out, dtype=np.float32)         # float32 products, as in C++
    low = pos.astype(np.int64)                                  # truncation toward zero
    step = (low < size_in - 1).astype(np.int64)
    lam1 = (pos - low.astype(np.float32)).astype(np.float32)
    lam0 = (np.float32(1.0) - lam1).astype(np.float32)
    return low, step, lam0, lam1


@register("Interp")
class Interp(Layer):
    """Bilinear resize with aligned corners (hszhao/PSPNet, from DeepLab-v2).

    Fork source: hszhao/PSPNet ``src/caffe/layers/interp_layer.cpp`` (sizes) and
    ``src/caffe/util/interp.cpp`` (``caffe_cpu_interp2``, its ``_backward``).

    Input: bottom cropped by ``pad_beg``/``pad_end`` (both <= 0; the same on H and W) to
    H_eff = H + pad_beg + pad_end.  Output size, checked in the fork's order:
    shrink_factor only: (H_eff - 1) / shrink + 1; zoom_factor only: H_eff + (H_eff - 1)(zoom - 1);
    height and width: as given; both factors: shrink, then zoom.  A second bottom is not
    used by this fork (DeepLab's size-from-blob variant is not PSPNet's).
    Value: rheight = (H_eff - 1) / (H_out - 1) (0 when H_out == 1) in float32; for output
    row h2, h1r = rheight * h2, h1 = int(h1r), lambda = h1r - h1, the next row clamped at
    the last; same for columns; equal sizes copy.  The gradient is autodiff of the same
    gather, which is the fork's ``caffe_cpu_interp2_backward`` (scatter-add with the same
    four weights).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    channels_last = True

    def setup(self):
        p = self.lp.interp_param
        n, c, h, w = _need_4_axes(self)
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        if self.pad_beg > 0 or self.pad_end > 0:
            raise self.error(f"pad_beg and pad_end must be <= 0 (only cropping is supported, as in "
                             f"PSPNet), got {self.pad_beg} and {self.pad_end}")
        h_eff, w_eff = h + self.pad_beg + self.pad_end, w + self.pad_beg + self.pad_end
        if h_eff < 1 or w_eff < 1:
            raise self.error(f"pad_beg {self.pad_beg} and pad_end {self.pad_end} crop the bottom "
                             f"{_shape_str(self.bottom_shapes[0])} to nothing")
        shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        if shrink and not zoom:
            s = self._factor(p.shrink_factor, "shrink_factor")
            out = ((h_eff - 1) // s + 1, (w_eff - 1) // s + 1)
        elif zoom and not shrink:
            z = self._factor(p.zoom_factor, "zoom_factor")
            out = (h_eff + (h_eff - 1) * (z - 1), w_eff + (w_eff - 1) * (z - 1))
        elif p.HasField("height") and p.HasField("width"):
            out = (int(p.height), int(p.width))
        elif shrink and zoom:
            s = self._factor(p.shrink_factor, "shrink_factor")
            z = self._factor(p.zoom_factor, "zoom_factor")
            oh, ow = (h_eff - 1) // s + 1, (w_eff - 1) // s + 1
            out = (oh + (oh - 1) * (z - 1), ow + (ow - 1) * (z - 1))
        else:
            raise self.error("interp_param needs an output size: zoom_factor, shrink_factor, "
                             "both, or height and width")
        if min(out) < 1:
            raise self.error(f"output size {out} must be positive")
        self.in_eff = (h_eff, w_eff)
        self.out_hw = out

    def _factor(self, value, name):
        if value < 1:
            raise self.error(f"{name} must be >= 1, got {value}")
        return int(value)

    def top_shapes(self):
        n, c = self.bottom_shapes[0][:2]
        return [(n, c) + tuple(self.out_hw)]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]                                   # (N, H, W, C)
        start = -self.pad_beg
        (h1, w1), (h2, w2) = self.in_eff, self.out_hw
        x = x[:, start:start + h1, start:start + w1, :]
        if (h1, w1) == (h2, w2):
            return [x]
        rlow, rstep, rl0, rl1 = _interp_axis(h1, h2)
        clow, cstep, cl0, cl1 = _interp_axis(w1, w2)
        dt = x.dtype

        def horizontal(rows):                            # w0 * x[w1] + w1lambda * x[w1 + w1p]
            return (jnp.asarray(cl0, dt)[None, None, :, None] * jnp.take(rows, clow, axis=2)
                    + jnp.asarray(cl1, dt)[None, None, :, None]
                    * jnp.take(rows, clow + cstep, axis=2))
        top = horizontal(jnp.take(x, rlow, axis=1))
        bottom = horizontal(jnp.take(x, rlow + rstep, axis=1))
        return [jnp.asarray(rl0, dt)[None, :, None, None] * top
                + jnp.asarray(rl1, dt)[None, :, None, None] * bottom]


# ---------------------------------------------------------------------------
# Upsample
# ---------------------------------------------------------------------------

@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _unpool(x, mask, top_size):
    """SegNet max-unpooling on (P, HW) planes: top[p, mask[p, i]] = x[p, i], zeros elsewhere,
    the last i winning where indices repeat (the fork's loop order)."""
    return _unpool_value(x, mask, top_size)


def _unpool_targets(mask, top_size):
    planes, size = mask.shape
    index = mask.astype(jnp.int32)                       # static_cast<int>: truncation
    valid = (index >= 0) & (index < top_size)
    target = jnp.where(valid, index + top_size * jnp.arange(planes, dtype=jnp.int32)[:, None],
                       planes * top_size)                # out of range: dropped
    return target.reshape(-1), valid.reshape(-1)


def _unpool_value(x, mask, top_size):
    planes, size = x.shape
    target, _ = _unpool_targets(mask, top_size)
    source = jnp.arange(planes * size, dtype=jnp.int32)
    winner = jnp.full((planes * top_size,), -1, jnp.int32).at[target].max(source, mode="drop")
    values = jnp.take(x.reshape(-1), jnp.maximum(winner, 0))
    return jnp.where(winner >= 0, values, jnp.zeros((), x.dtype)).reshape(planes, top_size)


def _unpool_fwd(x, mask, top_size):
    return _unpool_value(x, mask, top_size), mask


def _unpool_bwd(top_size, mask, g):
    # upsample_layer.cpp Backward_cpu: bottom_diff[i] = top_diff[mask[i]] for every i (a
    # gather, also for the positions that lost a repeated index); no diff for the mask
    target, valid = _unpool_targets(mask, top_size)
    flat = g.reshape(-1)
    dx = jnp.where(valid, jnp.take(flat, jnp.minimum(target, flat.shape[0] - 1)),
                   jnp.zeros((), g.dtype))
    return dx.reshape(mask.shape), jnp.zeros_like(mask)


_unpool.defvjp(_unpool_fwd, _unpool_bwd)


@register("Upsample")
class Upsample(Layer):
    """Two forks' ``Upsample``, told apart by the number of bottoms.

    One bottom: nearest neighbour (eric612/MobileNet-YOLO ``src/caffe/layers/upsample_layer.cpp``,
    the YOLOv3 ports' layer from BVLC PR 6384): top (N, C, H*scale, W*scale), each pixel
    repeated scale x scale; the gradient sums each block back.  ``upsample_param.scale``
    is required here (the ports default to 1, an identity: an unset scale is taken as a
    mistake), and SegNet's other fields are rejected.

    Two bottoms: SegNet max-unpooling (alexgkendall/caffe-segnet
    ``src/caffe/layers/upsample_layer.cpp``); bottom 1 is a Pooling MAX mask top of
    bottom 0's shape: flat indices h*W + w into the pooling layer's (H, W) input plane,
    netspec's Pooling mask convention (Caffe's).  Output size: upsample_h x upsample_w
    when both are given (each > 1); otherwise scale_h x scale_w (both given, scale not) or
    scale (default 2) on both axes: H*scale_h - pad_out_h by W*scale_w - pad_out_w
    (pad_out_* only with a scale of 2 on that axis).  The top is zero except at each
    mask index, which gets the bottom value (the last one in the fork's loop order when
    indices repeat); the gradient gathers: bottom_diff[i] = top_diff[mask[i]].  Mask
    indices outside the top plane are dropped here (the fork aborts); the mask gets no
    gradient.
    """

    min_bottoms, max_bottoms = 1, 2
    min_tops = max_tops = 1

    @property
    def channels_last(self):
        return len(self.bottom_shapes) == 1

    @property
    def float32_compute(self):
        return len(self.bottom_shapes) == 2      # mask indices stay exact

    def setup(self):
        p = self.lp.upsample_param
        n, c, h, w = _need_4_axes(self)
        self.unpool = len(self.bottom_shapes) == 2
        if not self.unpool:
            segnet_only = [f for f in ("scale_h", "scale_w", "pad_out_h", "pad_out_w",
                                       "upsample_h", "upsample_w") if p.HasField(f)]
            if segnet_only:
                raise self.error(f"upsample_param {', '.join(segnet_only)} belong to SegNet's "
                                 "max-unpooling Upsample, which takes two bottoms (data and "
                                 "pooling mask); a one-bottom Upsample takes only scale")
            if not p.HasField("scale"):
                raise self.error("a one-bottom (nearest neighbour) Upsample needs "
                                 "upsample_param.scale")
            if p.scale < 1:
                raise self.error(f"scale must be >= 1, got {p.scale}")
            self.scale = int(p.scale)
            self.out_hw = (h * self.scale, w * self.scale)
            return
        _need_4_axes(self, 1, "mask (bottom 1)")
        if self.bottom_shapes[1] != self.bottom_shapes[0]:
            raise self.error(f"the mask (bottom 1) must have bottom 0's shape "
                             f"{_shape_str(self.bottom_shapes[0])}, got "
                             f"{_shape_str(self.bottom_shapes[1])}")
        has = p.HasField
        if not ((has("upsample_h") and has("upsample_w"))
                or (not has("scale") and has("scale_h") and has("scale_w"))
                or (not has("scale_h") and not has("scale_w"))):
            raise self.error("upsample_param needs upsample_h and upsample_w, or scale, or "
                             "scale_h and scale_w (not scale with scale_h/scale_w)")
        if has("upsample_h") and has("upsample_w"):
            if p.upsample_h <= 1 or p.upsample_w <= 1:
                raise self.error(f"upsample_h and upsample_w must be > 1, got {p.upsample_h} "
                                 f"and {p.upsample_w}")
            self.out_hw = (int(p.upsample_h), int(p.upsample_w))
        else:
            if has("scale_h"):
                sh, sw = int(p.scale_h), int(p.scale_w)
            else:
                sh = sw = int(p.scale) if has("scale") else 2
            if sh <= 1 or sw <= 1:
                raise self.error(f"the scale must be > 1, got {sh} x {sw}")
            if (p.pad_out_h and sh != 2) or (p.pad_out_w and sw != 2):
                raise self.error("pad_out_h / pad_out_w need a scale of 2 on that axis")
            self.out_hw = (h * sh - int(p.pad_out_h), w * sw - int(p.pad_out_w))

    def top_shapes(self):
        n, c = self.bottom_shapes[0][:2]
        return [(n, c) + tuple(self.out_hw)]

    def forward(self, ctx, params, bottoms):
        if not self.unpool:
            x = bottoms[0]                               # (N, H, W, C)
            return [jnp.repeat(jnp.repeat(x, self.scale, axis=1), self.scale, axis=2)]
        x, mask = bottoms                                # (N, C, H, W)
        n, c, h, w = self.bottom_shapes[0]
        oh, ow = self.out_hw
        top = _unpool(x.reshape(n * c, h * w), jax.lax.stop_gradient(mask).reshape(n * c, h * w),
                      oh * ow)
        return [top.reshape(n, c, oh, ow)]


# ---------------------------------------------------------------------------
# Reorg
# ---------------------------------------------------------------------------

def darknet_reorg_index(channels, height, width, stride):
    """(bottom_index, top_index) pairs of ``reorg_cpu`` over one item's (C, H, W) bottom:
    eric612/MobileNet-YOLO ``include/caffe/layers/reorg_layer.hpp`` (Darknet's reorg)."""
    t_c, t_w, t_h = channels // (stride * stride), width * stride, height * stride
    c, h, w = np.meshgrid(np.arange(channels), np.arange(height), np.arange(width), indexing="ij")
    bottom_index = w + width * (h + height * c)
    c2, offset = c % t_c, c // t_c
    w2 = w * stride + offset % stride
    h2 = h * stride + offset // stride
    top_index = w2 + t_w * (h2 + t_h * c2)
    return bottom_index.reshape(-1), top_index.reshape(-1)


@register("Reorg")
class Reorg(Layer):
    """YOLOv2's passthrough reorganisation (eric612/MobileNet-YOLO
    ``src/caffe/layers/reorg_layer.cpp`` and ``reorg_cpu`` in
    ``include/caffe/layers/reorg_layer.hpp``; Darknet's ``reorg_cpu``).

    With the bottom (C, H, W), t_c = C / stride^2, for every bottom position (c, h, w):
    c2 = c % t_c, offset = c / t_c, w2 = w*stride + offset % stride,
    h2 = h*stride + offset / stride, top_index = w2 + W*stride*(h2 + H*stride*c2).
    ``reverse: false`` (the default, YOLOv2): top[bottom_index] = bottom[top_index], top
    (C*stride^2, H/stride, W/stride) -- Darknet's channel order, which is not a plain
    space-to-depth.  ``reverse: true``: top[top_index] = bottom[bottom_index], top
    (C/stride^2, H*stride, W*stride).  C must be a multiple of stride^2 (and H, W of the
    stride without ``reverse``) so that this is a permutation.

    Gradient: the inverse permutation (Darknet's backward, ``reorg_cpu`` with the other
    direction).  eric612's Backward_cpu/gpu read an internal ``diff_`` blob that is never
    written, so that fork's bottom diff is always zero; netspec gives the true gradient.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        p = self.lp.reorg_param
        n, c, h, w = _need_4_axes(self)
        if not p.HasField("stride"):
            raise self.error("reorg_param needs stride")
        s = int(p.stride)
        if s < 1:
            raise self.error(f"stride must be >= 1, got {s}")
        if self.lp.top[0] in self.lp.bottom:
            raise self.error("does not allow in-place computation (as the fork)")
        self.reverse = bool(p.reverse)
        if c % (s * s) or (not self.reverse and (h % s or w % s)):
            need = "C" if self.reverse else "C by stride^2 and H, W"
            raise self.error(f"stride {s} must divide {need} (bottom shape "
                             f"{_shape_str(self.bottom_shapes[0])})")
        if self.reverse:
            self.out = (n, c // (s * s), h * s, w * s)
        else:
            self.out = (n, c * s * s, h // s, w // s)
        bottom_index, top_index = darknet_reorg_index(c, h, w, s)
        gather = np.empty(c * h * w, np.int64)
        if self.reverse:
            gather[top_index] = bottom_index             # top[top_index] = bottom[bottom_index]
        else:
            gather[bottom_index] = top_index             # top[bottom_index] = bottom[top_index]
        self.gather = gather.astype(np.int32)

    def top_shapes(self):
        return [self.out]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        flat = x.reshape(x.shape[0], -1)
        return [jnp.take(flat, jnp.asarray(self.gather), axis=1).reshape(self.out)]
