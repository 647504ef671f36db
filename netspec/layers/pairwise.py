"""Pair layers of J. Long's thesis, ch. 4 ("Producing Object Segments: Pairwise Networks").

A *pair blob* is a Caffe blob (N, Kh*Kw, H, W) of doubly indexed values p(x, Δ): the
region centre x runs over the H x W grid and the offset Δ = (i - Kh//2, j - Kw//2)
over a Kh x Kw window, stored in channel i*Kw + j.  ``pair_param.window`` (or
``window_h``/``window_w``) gives the window; when none is given it is the square
window the channel count implies.

* ``PairTranspose``: p^T(x, Δ) = p(x + Δ, -Δ), zero where x + Δ is off the grid or -Δ
  is outside the window (even windows have an asymmetric offset range).
* ``PairCompose``: p12(x, Δ) = (+)_δ p1(x, δ) (x) p2(x + δ, Δ - δ) over δ in window 1
  with Δ - δ in window 2 and x + δ on the grid; odd windows K1, K2 give a window
  K1 + K2 - 1.  ``semiring: SUM_PRODUCT`` ((+) = sum, (x) = product; an empty sum is 0)
  or ``MIN_SUM`` ((+) = min, (x) = +; an empty minimum is +inf with zero gradient; the
  gradient goes to the first minimal term, δ in bottom 0's channel order, on ties).
* ``PairRegionLoss``: the region loss of section 4.3.6 (geometry in its docstring).

The layers compute in NCHW and are not ``spatially_local`` (no padded execution).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..proto import caffe_pb2
from .base import Layer, register

_HIGHEST = jax.lax.Precision.HIGHEST
_OFF_IMAGE = -(2 ** 30)       # label sentinel for pixels off the image
_MAX_ID = 256                 # instance ids are 0..255 (0 background, 255 void by default)


def _window(layer, channels, k, kh, kw, what):
    """The (Kh, Kw) window of a pair blob with ``channels`` channels; ``k``, ``kh``, ``kw``
    are the parameter values (0 = unset)."""
    h, w = kh or k, kw or k
    if not h and not w:
        side = math.isqrt(channels)
        if side * side != channels:
            raise layer.error(f"{what} has {channels} channels, not a square window's count; "
                              f"give pair_param window (or window_h and window_w)")
        h = w = side
    if not h or not w:
        raise layer.error("pair_param needs window, or both window_h and window_w")
    if h * w != channels:
        raise layer.error(f"{what} has {channels} channels; a pair blob with a {h}x{w} "
                          f"window needs {h * w} (Kh*Kw)")
    return h, w


def _check_pair_shape(layer, index):
    shape = layer.bottom_shapes[index]
    if len(shape) != 4:
        raise layer.error(f"bottom {index} must be a pair blob (N, Kh*Kw, H, W); got shape {shape}")
    return shape


@register("PairTranspose")
class PairTranspose(Layer):
    """top(x, Δ) = bottom(x + Δ, -Δ); zero where x + Δ is off the grid or -Δ is outside
    the window.  One static shifted slice per channel of the zero-padded bottom."""
    min_bottoms, max_bottoms = 1, 1
    min_tops, max_tops = 1, 1

    def setup(self):
        n, c, h, w = _check_pair_shape(self, 0)
        pp = self.lp.pair_param
        self.kh, self.kw = _window(self, c, pp.window, pp.window_h, pp.window_w, "bottom 0")

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        n, _, h, w = x.shape
        kh, kw = self.kh, self.kw
        ch, cw = kh // 2, kw // 2
        xp = jnp.pad(x, ((0, 0), (0, 0), (ch, kh - 1 - ch), (cw, kw - 1 - cw)))
        channels = []
        for i in range(kh):
            for j in range(kw):
                dy, dx = i - ch, j - cw
                si, sj = ch - dy, cw - dx            # the channel of -Δ
                if not (0 <= si < kh and 0 <= sj < kw):
                    channels.append(jnp.zeros((n, h, w), x.dtype))
                    continue
                channels.append(xp[:, si * kw + sj, ch + dy:ch + dy + h, cw + dx:cw + dx + w])
        return [jnp.stack(channels, axis=1)]


@register("PairCompose")
class PairCompose(Layer):
    """Matrix product of two pair blobs on the same grid (thesis eq. for p12).

    Bottom 0's window is ``window``/``window_h``/``window_w``, bottom 1's
    ``second_window``/``second_window_h``/``second_window_w`` (unset: like bottom 0's;
    with neither given, each is the square window its channel count implies).  Both
    must be odd; the top's window is K1 + K2 - 1 per axis.  Terms with x + δ off the grid
    are left out; an empty sum is 0 (SUM_PRODUCT) or +inf (MIN_SUM, zero gradient).
    MIN_SUM's gradient is the subgradient to the first minimal term (δ in bottom 0's
    channel order).  Cost: one K2-block update of the top per δ (a K1h*K1w-step traced loop).
    """
    min_bottoms, max_bottoms = 2, 2
    min_tops, max_tops = 1, 1

    def setup(self):
        a = _check_pair_shape(self, 0)
        b = _check_pair_shape(self, 1)
        if (a[0], a[2], a[3]) != (b[0], b[2], b[3]):
            raise self.error(f"bottoms must share N, H and W; got shapes {a} and {b}")
        pp = self.lp.pair_param
        self.k1 = _window(self, a[1], pp.window, pp.window_h, pp.window_w, "bottom 0")
        if pp.second_window or pp.second_window_h or pp.second_window_w:
            self.k2 = _window(self, b[1], pp.second_window, pp.second_window_h,
                              pp.second_window_w, "bottom 1")
        elif pp.window or pp.window_h or pp.window_w:
            self.k2 = _window(self, b[1], 0, *self.k1, "bottom 1")
        else:
            self.k2 = _window(self, b[1], 0, 0, 0, "bottom 1")
        for i, (kh, kw) in enumerate((self.k1, self.k2)):
            if kh % 2 == 0 or kw % 2 == 0:
                raise self.error(f"PairCompose needs odd windows; bottom {i} has a "
                                 f"{kh}x{kw} window")
        self.min_sum = pp.semiring == caffe_pb2.PairParameter.MIN_SUM

    def top_shapes(self):
        n, _, h, w = self.bottom_shapes[0]
        return [(n, (self.k1[0] + self.k2[0] - 1) * (self.k1[1] + self.k2[1] - 1), h, w)]

    def forward(self, ctx, params, bottoms):
        (k1h, k1w), (k2h, k2w) = self.k1, self.k2
        a, b = bottoms
        n, _, h, w = a.shape
        a = a.reshape(n, k1h, k1w, h, w)
        b = b.reshape(n, k2h, k2w, h, w)
        fill = jnp.asarray(jnp.inf if self.min_sum else 0, b.dtype)
        c1h, c1w = k1h // 2, k1w // 2
        bp = jnp.pad(b, ((0, 0), (0, 0), (0, 0), (c1h, c1h), (c1w, c1w)), constant_values=fill)
        acc = jnp.full((n, k1h + k2h - 1, k1w + k2w - 1, h, w), fill, a.dtype)
        for i1 in range(k1h):
            for j1 in range(k1w):
                # p2(x + δ, ·) for δ = (i1 - c1h, j1 - c1w), fill where x + δ is off the grid
                shifted = bp[:, :, :, i1:i1 + h, j1:j1 + w]
                p1 = a[:, i1, j1][:, None, None]
                # top offset Δ = δ + δ2 sits at index (i1 + i2, j1 + j2): a K2 block
                block = (slice(None), slice(i1, i1 + k2h), slice(j1, j1 + k2w))
                if self.min_sum:
                    term, current = p1 + shifted, acc[block]
                    # strict <: the first minimum (in δ order) keeps the value and gradient
                    acc = acc.at[block].set(jnp.where(term < current, term, current))
                else:
                    acc = acc.at[block].add(p1 * shifted)
        return [acc.reshape(self.top_shapes()[0])]


def _bilinear_taps(k, u):
    """(k*u, k) matrix taking a k-cell window's samples to its k*u upsampled pixels.

    Caffe's bilinear Deconvolution (stride u, kernel 2u - u%2) cropped by u//2 puts
    sample i at fine coordinate i*u + (u - 1)/2 with weight max(0, 1 - |e - (u - 1)/2| / u)
    at fine offset e from the cell's start; nothing comes from beyond the window."""
    fine = np.arange(k * u)[:, None]
    e = fine - np.arange(k)[None, :] * u
    return np.maximum(0.0, 1.0 - np.abs(e - (u - 1) / 2.0) / u).astype(np.float32)


@register("PairRegionLoss")
class PairRegionLoss(Layer):
    """Binary logistic region loss of a pair-prediction pathway against an instance map.

    Bottoms: pair logits (N, Kh*Kw, h, w); instance map (N, 1, H, W) at image resolution
    (0 background, ``loss_param.ignore_label`` (default 255) void, other ids 1..255
    instances; values are truncated to int; ids outside 0..255 count as void).
    Tops: the loss; optionally the objectness target (N, 1, h, w) (below).

    Geometry (s = ``pair_param.stride``, u = ``pair_param.upsample`` or s when 0,
    o = floor((s - u) / 2)): window cell Δ of centre x = (y, x) covers the image pixels
    [s*y + o + Δy*u, +u) x [s*x + o + Δx*u, +u), so the window covers Kh*u x Kw*u
    pixels; the centre's own pixel ("x's pixel") is (s*y + (s-1)//2, s*x + (s-1)//2).
    Each region is upsampled by u inside the loss exactly as Caffe's bilinear
    Deconvolution (stride u, kernel 2u - u%2, bilinear filler) of the Kh x Kw region,
    cropped by u//2 to Kh*u x Kw*u: cell samples sit at cell centres, and window pixels
    near the window's edge blend with zero (the window's outside).

    Target at (x, pixel q of x's window): 1 if q holds x's instance, 0 if it holds
    another instance or background.  Counted only where x's pixel is on the image and
    in an instance assigned to this pathway, and q is on the image and not void.
    Scale assignment: an instance is assigned to centre x iff its bounding box lies
    entirely inside x's window and its larger relative side
    max(box_h / (Kh*u), box_w / (Kw*u)) >= ``pair_param.min_scale`` (default 0.5).
    The loss is the numerically stable sigmoid cross-entropy averaged over the counted
    entries (sum / max(count, 1)).

    The full-resolution regions are never stored: a scan over the Kh*u fine window rows
    upsamples one row of every region at a time (rematerialised in the backward pass).

    Objectness target (second top): per centre 1 where x's pixel is in an instance
    assigned here, 0 where it is background, ``ignore_label`` elsewhere (void, off the
    image, or an instance too small or not fitting the window); feed it with a score
    blob to SigmoidCrossEntropyLoss with the same ``ignore_label``.
    """
    min_bottoms, max_bottoms = 2, 2
    min_tops, max_tops = 1, 2
    is_loss = True
    float32_compute = True

    def setup(self):
        n, c, h, w = _check_pair_shape(self, 0)
        label = self.bottom_shapes[1]
        if len(label) != 4 or label[1] != 1 or label[0] != n:
            raise self.error(f"bottom 1 must be an instance map (N, 1, H, W) with N = {n}; "
                             f"got shape {label}")
        pp = self.lp.pair_param
        self.kh, self.kw = _window(self, c, pp.window, pp.window_h, pp.window_w, "bottom 0")
        if pp.stride < 1:
            raise self.error("pair_param.stride must be at least 1")
        self.s = int(pp.stride)
        self.u = int(pp.upsample or pp.stride)
        self.o = (self.s - self.u) // 2
        if not 0 <= pp.min_scale <= 1:
            raise self.error(f"pair_param.min_scale must lie in [0, 1]; got {pp.min_scale}")
        self.min_scale = float(pp.min_scale)
        lp = self.lp.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else 255

    def top_shapes(self):
        n, _, h, w = self.bottom_shapes[0]
        return [()] + [(n, 1, h, w)] * (self.num_tops - 1)

    def _centres(self, labels, h, w):
        """Per centre: its instance id (N, h, w) and whether it is counted, plus the
        objectness target."""
        n, height, width = labels.shape
        s, u, o, kh, kw = self.s, self.u, self.o, self.kh, self.kw
        ay = s * np.arange(h) + (s - 1) // 2
        ax = s * np.arange(w) + (s - 1) // 2
        on_image = jnp.asarray((ay < height)[:, None] & (ax < width)[None, :])
        m = labels[:, np.minimum(ay, height - 1)][:, :, np.minimum(ax, width - 1)]
        known = (m >= 0) & (m < _MAX_ID) & (m != self.ignore)
        instance = on_image & known & (m != 0)
        # bounding boxes of every id, per item
        ids = jnp.where((labels >= 0) & (labels < _MAX_ID), labels, _MAX_ID)
        ids = ids + (_MAX_ID + 1) * jnp.arange(n, dtype=ids.dtype)[:, None, None]
        rows = jnp.broadcast_to(jnp.arange(height, dtype=jnp.int32)[:, None], (height, width))
        cols = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32)[None, :], (height, width))
        segs = n * (_MAX_ID + 1)

        def box(values, reduce):
            v = jnp.broadcast_to(values, labels.shape).ravel()
            return reduce(v, ids.ravel(), num_segments=segs).reshape(n, _MAX_ID + 1)
        idx = jnp.clip(m, 0, _MAX_ID).reshape(n, -1)

        def at(table):
            return jnp.take_along_axis(table, idx, axis=1).reshape(m.shape)
        y0, y1 = at(box(rows, jax.ops.segment_min)), at(box(rows, jax.ops.segment_max))
        x0, x1 = at(box(cols, jax.ops.segment_min)), at(box(cols, jax.ops.segment_max))
        top = jnp.asarray(s * np.arange(h) + o - (kh // 2) * u)[:, None]
        left = jnp.asarray(s * np.arange(w) + o - (kw // 2) * u)[None, :]
        inside = (y0 >= top) & (y1 < top + kh * u) & (x0 >= left) & (x1 < left + kw * u)
        side = jnp.maximum((y1 - y0 + 1) / (kh * u), (x1 - x0 + 1) / (kw * u))
        assigned = instance & inside & (side >= self.min_scale)
        objectness = jnp.where(assigned, 1, jnp.where(on_image & (m == 0), 0, self.ignore))
        return m, assigned, objectness

    def forward(self, ctx, params, bottoms):
        pred, labels = bottoms
        n, _, h, w = pred.shape
        labels = jax.lax.stop_gradient(labels)[:, 0].astype(jnp.int32)
        height, width = labels.shape[1:]
        s, u, o, kh, kw = self.s, self.u, self.o, self.kh, self.kw
        m, assigned, objectness = self._centres(labels, h, w)

        # labels padded so every window pixel of every centre indexes inside
        row0 = o - (kh // 2) * u                      # first window row of centre 0
        col0 = o - (kw // 2) * u
        pad_t, pad_l = max(0, -row0), max(0, -col0)
        pad_b = max(0, s * (h - 1) + row0 + kh * u - height)
        pad_r = max(0, s * (w - 1) + col0 + kw * u - width)
        lp = jnp.pad(labels, ((0, 0), (pad_t, pad_b), (pad_l, pad_r)), constant_values=_OFF_IMAGE)
        cols = (s * np.arange(w)[None, :] + col0 + pad_l + np.arange(kw * u)[:, None])  # (kw*u, w)
        rows0 = s * np.arange(h) + row0 + pad_t
        dtype = jnp.promote_types(pred.dtype, jnp.float32)    # float32 at least
        p = pred.reshape(n, kh, kw, h, w).astype(dtype)
        tap_y = jnp.asarray(_bilinear_taps(kh, u), dtype)
        tap_x = jnp.asarray(_bilinear_taps(kw, u), dtype)
        centre_id = m[:, None]                        # (N, 1, h, w)
        counted_centre = assigned[:, None]

        def row(carry, a):
            total, counted = carry
            p_row = jnp.einsum("i,nijyx->njyx", tap_y[a], p, precision=_HIGHEST)
            f = jnp.einsum("bj,njyx->nbyx", tap_x, p_row, precision=_HIGHEST)   # (N, kw*u, h, w)
            lab = jnp.take(lp, rows0 + a, axis=1)     # (N, h, Wp)
            lab = jnp.transpose(lab[:, :, cols], (0, 2, 1, 3))                   # (N, kw*u, h, w)
            # off the image (the sentinel is negative), void, or not an id: not counted
            valid = counted_centre & (lab >= 0) & (lab < _MAX_ID) & (lab != self.ignore)
            target = (lab == centre_id).astype(f.dtype)
            loss = jnp.maximum(f, 0) - f * target + jnp.log1p(jnp.exp(-jnp.abs(f)))
            total = total + jnp.sum(jnp.where(valid, loss, 0))
            counted = counted + jnp.sum(valid, dtype=jnp.int32)
            return (total, counted), None

        init = (jnp.zeros((), dtype), jnp.zeros((), jnp.int32))
        (total, counted), _ = jax.lax.scan(jax.checkpoint(row), init, jnp.arange(kh * u))
        loss = (total / jnp.maximum(counted, 1).astype(dtype)).astype(pred.dtype)
        tops = [loss]
        if self.num_tops > 1:
            tops.append(jax.lax.stop_gradient(objectness[:, None].astype(pred.dtype)))
        return tops
