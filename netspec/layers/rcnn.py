"""The Fast/Faster R-CNN and R-FCN layers: ROIPooling, SmoothL1Loss, PSROIPooling.

Each follows its fork's source (read, not copied), including the fork's rounding:

* ``ROIPooling`` and ``SmoothL1Loss``: rbgirshick/caffe-fast-rcnn, branch faster-rcnn,
  ``src/caffe/layers/roi_pooling_layer.cu`` / ``smooth_L1_loss_layer.cu`` (the ``.cpp``
  files have a CPU forward for ROIPooling only; every backward is CUDA-only).
* ``PSROIPooling``: daijifeng001/caffe-rfcn, ``src/caffe/layers/psroi_pooling_layer.cu``
  (its ``.cpp`` is ``NOT_IMPLEMENTED``: the arithmetic here is the CUDA kernels').

The rois bottom is ``(R, 5)`` (or Caffe's ``(R, 5, 1, 1)``), one row per region:
``[batch_index, x1, y1, x2, y2]`` in image coordinates.  R is the blob's first axis, so
shapes stay static.  The forks do not check the batch index on the GPU (they read out
of bounds); here a region whose truncated batch index is not in ``[0, N)`` pools to NaN
and sends no gradient.  No layer here sends a gradient to the rois (Caffe sets none, or
zeros).  All three compute in float32 in a bfloat16 pass (image coordinates do not fit
bfloat16's 8-bit mantissa), in the bottoms' float type otherwise (Caffe's ``Dtype``).
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .base import Layer, count, register

FLT_MAX = float(np.finfo(np.float32).max)


def _round(x):
    """C's ``round``/``roundf``: halves away from zero (``jnp.round`` rounds them to even)."""
    t = jnp.trunc(x)
    return t + jnp.where(jnp.abs(x - t) >= 0.5, jnp.sign(x), jnp.zeros_like(x))


def _check_rois(layer, index=1):
    """The rois bottom must be (R, 5) or (R, 5, 1, 1); returns R."""
    shape = layer.bottom_shapes[index]
    if len(shape) < 2 or shape[1] != 5 or count(shape[2:]) != 1:
        raise layer.error(f"rois bottom must have shape (R, 5) [batch_index, x1, y1, x2, y2] "
                          f"(or (R, 5, 1, 1)); got shape {shape}")
    return shape[0]


def _check_features(layer):
    shape = layer.bottom_shapes[0]
    if len(shape) != 4:
        raise layer.error(f"the feature bottom must have 4 axes (N, C, H, W); got shape {shape}")
    return shape


def _batch_index(rois, batch):
    """``int roi_batch_ind = bottom_rois[0]`` (truncation), whether it names an image of the
    batch, and the index clipped into range for gathers."""
    b = jnp.trunc(rois[:, 0])
    valid = (b >= 0) & (b < batch)
    return jnp.clip(b, 0, batch - 1).astype(jnp.int32), valid


# -- ROIPooling --------------------------------------------------------------------

def _roi_bins(rois, scale, pooled, size):
    """Caffe's ROI pooling bins along one axis.  ``rois``: (R, 2) start/end coordinates.

    Returns the ints (start, end) of the ROI on the feature map, the float bin size, and
    the clipped bin boundaries (R, pooled) [start, end).
    """
    dt = rois.dtype
    start = _round(rois[:, 0] * scale).astype(jnp.int32)
    end = _round(rois[:, 1] * scale).astype(jnp.int32)
    length = jnp.maximum(end - start + 1, 1)                 # malformed ROIs become 1 cell
    bin_size = length.astype(dt) / jnp.asarray(pooled, dt)
    p = jnp.arange(pooled, dtype=dt)
    lo = jnp.floor(p[None, :] * bin_size[:, None]).astype(jnp.int32) + start[:, None]
    hi = jnp.ceil((p[None, :] + 1) * bin_size[:, None]).astype(jnp.int32) + start[:, None]
    return start, end, bin_size, jnp.clip(lo, 0, size), jnp.clip(hi, 0, size)


def _first_max(va, ia, vb, ib):
    """The larger of two (value, flat index) pairs; on equal values the smaller index."""
    take_b = (vb > va) | ((vb == va) & (ib < ia))
    return jnp.where(take_b, vb, va), jnp.where(take_b, ib, ia)


def _row_range_table(x):
    """Sparse table along W: level k holds, per cell (n, c, h, w), the first maximum of
    x[n, c, h, w : w + 2^k] (value, flat index h * W + w).  Cells Caffe's strict ">" from
    -FLT_MAX can never pick (<= -FLT_MAX, NaN) enter as (-inf, H * W)."""
    _, _, height, width = x.shape
    keep = x > -FLT_MAX
    flat = (jax.lax.broadcasted_iota(jnp.int32, x.shape, 2) * width +
            jax.lax.broadcasted_iota(jnp.int32, x.shape, 3))
    values = [jnp.where(keep, x, jnp.asarray(-jnp.inf, x.dtype))]
    indices = [jnp.where(keep, flat, height * width)]
    step = 1
    while 2 * step <= width:
        v, i = values[-1], indices[-1]
        pad = [(0, 0)] * 3 + [(0, step)]
        shifted_v = jnp.pad(v[..., step:], pad, constant_values=-jnp.inf)
        shifted_i = jnp.pad(i[..., step:], pad, constant_values=height * width)
        v, i = _first_max(v, i, shifted_v, shifted_i)
        values.append(v)
        indices.append(i)
        step *= 2
    return jnp.stack(values), jnp.stack(indices)


def _roi_pool_forward(x, rois, pooled, scale):
    """Max per bin, the flat argmax index h * W + w (-1 if none) and the backward mask."""
    n, c, height, width = x.shape
    ph_n, pw_n = pooled
    dt = x.dtype
    rois = rois.reshape(rois.shape[0], 5).astype(dt)
    scale = jnp.asarray(scale, dt)
    b, valid_b = _batch_index(rois, n)
    sh, eh, bin_h, hs, he = _roi_bins(rois[:, 2::2], scale, ph_n, height)
    sw, ew, bin_w, ws, we = _roi_bins(rois[:, 1::2], scale, pw_n, width)
    r = rois.shape[0]

    # Per row, the first maximum of any column range [w0, w0 + 2^k) from a sparse table
    # along W; rows of a bin are then scanned in order with a strict ">": together the
    # fork's row-major scan from -FLT_MAX (the first maximum = the smallest h * W + w).
    table_v, table_i = _row_range_table(x)                     # (K, N, C, H, W)
    length = jnp.maximum(we - ws, 1)                           # (R, PW)
    level = sum(((length >= (1 << k)).astype(jnp.int32) for k in range(1, table_v.shape[0])),
                jnp.zeros_like(length))
    w0 = jnp.clip(ws, 0, width - 1)
    w1 = jnp.clip(we - jnp.left_shift(1, level), 0, width - 1)
    channel = jnp.arange(c)[None, None, :]
    k_idx, b_idx = level[:, :, None], b[:, None, None]

    def along_h(h, carry):
        best, arg = carry                                      # (R, PH, PW, C)
        row_v = jax.lax.dynamic_index_in_dim(table_v, h, 3, keepdims=False)   # (K, N, C, W)
        row_i = jax.lax.dynamic_index_in_dim(table_i, h, 3, keepdims=False)
        v, i = _first_max(row_v[k_idx, b_idx, channel, w0[:, :, None]],
                          row_i[k_idx, b_idx, channel, w0[:, :, None]],
                          row_v[k_idx, b_idx, channel, w1[:, :, None]],
                          row_i[k_idx, b_idx, channel, w1[:, :, None]])   # (R, PW, C)
        inside = (hs <= h) & (h < he)                          # (R, PH)
        take = inside[:, :, None, None] & (v[:, None] > best)
        return jnp.where(take, v[:, None], best), jnp.where(take, i[:, None], arg)

    best = jnp.full((r, ph_n, pw_n, c), -jnp.inf, dt)
    arg = jnp.full((r, ph_n, pw_n, c), -1, jnp.int32)
    best, arg = jax.lax.fori_loop(0, height, along_h, (best, arg))
    best = jnp.transpose(best, (0, 3, 1, 2))                   # (R, C, PH, PW)
    arg = jnp.transpose(arg, (0, 3, 1, 2))
    best = jnp.where(best == -jnp.inf, jnp.asarray(-FLT_MAX, dt), best)   # nothing beat -FLT_MAX

    empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]    # (R, PH, PW)
    top = jnp.where(empty[:, None], jnp.zeros((), dt), best)
    top = jnp.where(valid_b[:, None, None, None], top, jnp.asarray(jnp.nan, dt))

    # ROIPoolBackward: bottom cell (h, w) of image b receives a bin's diff when the bin's
    # argmax is (h, w), (h, w) lies in the ROI's rounded box, and the bin is in the
    # "feasible set" the kernel recomputes from (h, w) by dividing by the bin size.
    h_arg, w_arg = arg // width, arg % width
    in_roi = ((w_arg >= sw[:, None, None, None]) & (w_arg <= ew[:, None, None, None]) &
              (h_arg >= sh[:, None, None, None]) & (h_arg <= eh[:, None, None, None]))

    def feasible(pos, start, bin_size, pooled_n, p_axis):
        rel = pos - start[:, None, None, None]
        size = bin_size[:, None, None, None]
        lo = jnp.clip(jnp.floor(rel.astype(dt) / size).astype(jnp.int32), 0, pooled_n)
        hi = jnp.clip(jnp.ceil((rel + 1).astype(dt) / size).astype(jnp.int32), 0, pooled_n)
        p = jax.lax.broadcasted_iota(jnp.int32, pos.shape, p_axis)
        return (lo <= p) & (p < hi)

    ok = ((arg >= 0) & in_roi & valid_b[:, None, None, None] &
          feasible(h_arg, sh, bin_h, ph_n, 2) & feasible(w_arg, sw, bin_w, pw_n, 3))
    channel = jax.lax.broadcasted_iota(jnp.int32, arg.shape, 1)
    target = (b[:, None, None, None] * c + channel) * (height * width) + jnp.maximum(arg, 0)
    return top, jnp.where(ok, target, 0), ok


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _roi_pool(x, rois, pooled, scale, avals):
    """``avals``: ((x shape, x dtype), (rois shape, rois dtype)), for the cotangents."""
    return _roi_pool_forward(x, rois, pooled, scale)[0]


def _roi_pool_fwd(x, rois, pooled, scale, avals):
    top, target, ok = _roi_pool_forward(x, rois, pooled, scale)
    return top, (target, ok)


def _roi_pool_bwd(pooled, scale, avals, residuals, g):
    target, ok = residuals
    (x_shape, x_dtype), (rois_shape, rois_dtype) = avals
    diff = jnp.where(ok, g, jnp.zeros((), g.dtype)).astype(x_dtype)
    grad = jnp.zeros(count(x_shape), x_dtype).at[target.reshape(-1)].add(diff.reshape(-1))
    return grad.reshape(x_shape), jnp.zeros(rois_shape, rois_dtype)


_roi_pool.defvjp(_roi_pool_fwd, _roi_pool_bwd)


@register("ROIPooling")
class ROIPooling(Layer):
    """Fast R-CNN's ROI max pooling (rbgirshick/caffe-fast-rcnn, branch faster-rcnn,
    ``src/caffe/layers/roi_pooling_layer.cu``; ``.cpp`` has the same forward).

    Bottoms: features (N, C, H, W), rois (R, 5).  Top: (R, C, pooled_h, pooled_w) (the
    fork keeps its argmax internal: one top).  Per ROI: ``start = round(x1 * spatial_scale)``
    (C ``round``: halves away from zero; the product in the bottoms' float type),
    ``end = round(x2 * spatial_scale)``, size ``max(end - start + 1, 1)``; bin ``p`` covers
    ``[floor(p * size / pooled), ceil((p + 1) * size / pooled))`` (float bin size) offset by
    ``start`` and clipped to the map.  MAX over the bin, starting from -FLT_MAX with a strict
    ``>`` in row-major order (ties: the first maximum in that scan); an empty bin is 0.

    Backward (``ROIPoolBackward``): each bin's diff goes to its argmax cell, summed over
    bins and ROIs; none to the rois.  As in the kernel, a bin sends nothing when its argmax
    lies outside the ROI's rounded box ``[start, end]`` (a malformed ROI with end < start
    pools its start cell forward but gets no gradient; so does a cell one past the ROI that
    a float32 last bin reaches, e.g. 57 cells in 7 bins) or outside the bins the kernel
    recomputes from the cell (``floor((h - start) / bin)`` .. ``ceil((h - start + 1) / bin)``).
    """
    min_bottoms, max_bottoms = 2, 2
    min_tops, max_tops = 1, 1
    float32_compute = True
    spatially_local = False

    def setup(self):
        p = self.lp.roi_pooling_param
        for field in ("pooled_h", "pooled_w"):
            if getattr(p, field) <= 0:
                raise self.error(f"roi_pooling_param.{field} must be > 0 (got {getattr(p, field)})")
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.spatial_scale = float(p.spatial_scale)
        self.channels = _check_features(self)[1]
        self.num_rois = _check_rois(self)

    def top_shapes(self):
        return [(self.num_rois, self.channels) + self.pooled]

    def forward(self, ctx, params, bottoms):
        x, rois = bottoms
        rois = jax.lax.stop_gradient(rois)
        avals = ((x.shape, np.dtype(x.dtype)), (rois.shape, np.dtype(rois.dtype)))
        return [_roi_pool(x, rois, self.pooled, self.spatial_scale, avals)]


# -- SmoothL1Loss ------------------------------------------------------------------

def _legacy_shape(shape):
    """Blob::LegacyShape: (num, channels, height, width), 1 for absent axes."""
    return tuple(shape) + (1,) * (4 - len(shape))


@register("SmoothL1Loss")
class SmoothL1Loss(Layer):
    """Fast R-CNN's smooth L1 loss (rbgirshick/caffe-fast-rcnn, branch faster-rcnn,
    ``src/caffe/layers/smooth_L1_loss_layer.cu``; the ``.cpp`` is NOT_IMPLEMENTED).

    Bottoms: predictions, targets, optionally inside weights and outside weights (both
    or neither).  ``d = w_in * (pred - target)``; per element ``0.5 * sigma^2 * d^2`` if
    ``|d| < 1 / sigma^2`` (sigma^2 = sigma * sigma in the float type, the threshold compared
    as the fork does, in double), else ``|d| - 0.5 / sigma^2``; times ``w_out``; summed and
    divided by ``num = bottom[0]->num()`` (the first axis), whatever the loss_param.
    Backward is the fork's: ``+-top_diff / num * f'(d) * w_in * w_out`` with
    ``f'(d) = sigma^2 * d`` or ``sign(d)``, to the predictions and the targets (the fork
    allows force_backward on both), never to the weights.  Shapes: same first axis and the
    same legacy channels/height/width (at most 4 axes), as the fork's Reshape checks.
    """
    is_loss = True
    float32_compute = True
    min_bottoms, max_bottoms = 2, 4
    min_tops, max_tops = 1, 1
    spatially_local = False

    def setup(self):
        shapes = self.bottom_shapes
        if len(shapes) == 3:
            raise self.error("if weights are used, give both inside and outside weights "
                             "(4 bottoms); got 3 bottoms")
        names = ("predictions", "targets", "inside weights", "outside weights")
        for name, shape in zip(names, shapes):
            if len(shape) > 4:
                raise self.error(f"{name} must have at most 4 axes; got shape {shape}")
        pred = _legacy_shape(shapes[0])
        if _legacy_shape(shapes[1])[0] != pred[0]:
            raise self.error(f"predictions and targets must have the same first dimension; "
                             f"got shapes {shapes[0]} and {shapes[1]}")
        for name, shape in zip(names[1:], shapes[1:]):
            if _legacy_shape(shape)[1:] != pred[1:] or count(shape) != count(shapes[0]):
                raise self.error(f"{name} shape {shape} does not match the predictions' "
                                 f"{shapes[0]}")
        sigma = self.lp.smooth_l1_loss_param.sigma
        self.sigma = float(sigma)
        self.num = pred[0]

    def top_shapes(self):
        return [()]

    def _constants(self, dtype):
        """sigma2 in Dtype, the threshold 1/sigma2 and 0.5/sigma2, and whether
        |d| == threshold (as Dtype) still counts as below the double 1.0/sigma2."""
        ftype = np.dtype(dtype).type
        sigma2 = ftype(ftype(self.sigma) * ftype(self.sigma))
        if sigma2 == 0:
            return sigma2, ftype(np.inf), ftype(np.inf), False
        exact = 1.0 / np.float64(sigma2)
        threshold = ftype(exact)
        return sigma2, threshold, ftype(0.5 / np.float64(sigma2)), bool(np.float64(threshold) < exact)

    def forward(self, ctx, params, bottoms):
        shape = self.bottom_shapes[0]
        pred, target = bottoms[0], bottoms[1].reshape(shape)
        dt = pred.dtype
        sigma2, threshold, half, equal_is_below = self._constants(dt)
        d = pred - target
        if len(bottoms) == 4:
            w_in = jax.lax.stop_gradient(bottoms[2].reshape(shape).astype(dt))
            d = w_in * d
        a = jnp.abs(d)
        quadratic = a < threshold
        if equal_is_below:
            quadratic = quadratic | (a == threshold)
        errors = jnp.where(quadratic, 0.5 * d * d * sigma2, a - half)
        if len(bottoms) == 4:
            errors = jax.lax.stop_gradient(bottoms[3].reshape(shape).astype(dt)) * errors
        return [jnp.sum(errors) / jnp.asarray(self.num, dt)]


# -- PSROIPooling ------------------------------------------------------------------

def _psroi_bins(rois, scale, group, size):
    """R-FCN's bins along one axis; ``rois``: (R, 2) start/end image coordinates."""
    dt = rois.dtype
    start = _round(rois[:, 0]) * scale
    end = (_round(rois[:, 1]) + 1) * scale
    length = jnp.maximum(end - start, jnp.asarray(0.1, dt))   # "avoid 0"
    bin_size = length / jnp.asarray(group, dt)
    p = jnp.arange(group, dtype=dt)
    lo = jnp.floor(p[None, :] * bin_size[:, None] + start[:, None]).astype(jnp.int32)
    hi = jnp.ceil((p[None, :] + 1) * bin_size[:, None] + start[:, None]).astype(jnp.int32)
    return jnp.clip(lo, 0, size), jnp.clip(hi, 0, size)


@register("PSROIPooling")
class PSROIPooling(Layer):
    """R-FCN's position-sensitive ROI average pooling (daijifeng001/caffe-rfcn,
    ``src/caffe/layers/psroi_pooling_layer.cu``; the ``.cpp`` forward and backward are
    NOT_IMPLEMENTED, so this transcribes the CUDA kernels' arithmetic).

    Bottoms: features (N, output_dim * group_size^2, H, W), rois (R, 5).  Top:
    (R, output_dim, group_size, group_size).  Per ROI, in the bottoms' float type:
    ``start = round(x1) * spatial_scale``, ``end = (round(x2) + 1) * spatial_scale`` (C
    ``round``, halves away from zero), size ``max(end - start, 0.1)``, bin size
    ``size / group_size``; bin ``p`` covers ``[floor(p * bin + start), ceil((p + 1) * bin + start))``
    clipped to the map.  Output ``(ctop, gh, gw)`` averages channel
    ``(ctop * group_size + gh) * group_size + gw`` over its bin (sum / bin area), 0 for an
    empty bin.  Backward spreads each diff evenly (diff / area) over the bin's cells,
    summed over overlapping bins and ROIs; the rois get zeros.  (nvcc may contract
    ``p * bin + start`` into one fused multiply-add; this computes the product and the sum
    each rounded, as the source is written.)
    """
    min_bottoms, max_bottoms = 2, 2
    min_tops, max_tops = 1, 1
    float32_compute = True
    spatially_local = False

    def setup(self):
        p = self.lp.psroi_pooling_param
        for field in ("spatial_scale", "output_dim", "group_size"):
            if not p.HasField(field):
                raise self.error(f"psroi_pooling_param.{field} is required")
        for field in ("output_dim", "group_size"):
            if getattr(p, field) <= 0:
                raise self.error(f"psroi_pooling_param.{field} must be > 0 (got {getattr(p, field)})")
        self.output_dim, self.group = int(p.output_dim), int(p.group_size)
        self.spatial_scale = float(p.spatial_scale)
        channels = _check_features(self)[1]
        want = self.output_dim * self.group * self.group
        if channels != want:
            raise self.error(f"input channel number does not match layer parameters: the "
                             f"features have {channels} channels, output_dim * group_size^2 "
                             f"= {self.output_dim} * {self.group}^2 = {want}")
        self.num_rois = _check_rois(self)

    def top_shapes(self):
        return [(self.num_rois, self.output_dim, self.group, self.group)]

    def forward(self, ctx, params, bottoms):
        x, rois = bottoms
        n, _, height, width = x.shape
        g, d = self.group, self.output_dim
        dt = x.dtype
        rois = jax.lax.stop_gradient(rois).reshape(rois.shape[0], 5).astype(dt)
        scale = jnp.asarray(self.spatial_scale, dt)
        b, valid_b = _batch_index(rois, n)
        hs, he = _psroi_bins(rois[:, 2::2], scale, g, height)
        ws, we = _psroi_bins(rois[:, 1::2], scale, g, width)
        rows = jnp.arange(height)
        cols = jnp.arange(width)
        mask_h = ((hs[:, :, None] <= rows) & (rows < he[:, :, None])).astype(dt)   # (R, G, H)
        mask_w = ((ws[:, :, None] <= cols) & (cols < we[:, :, None])).astype(dt)   # (R, G, W)
        image = (b[:, None] == jnp.arange(n)).astype(dt)                             # (R, N)
        xv = x.reshape(n, d, g, g, height, width)      # channel (ctop * G + gh) * G + gw
        hi = jax.lax.Precision.HIGHEST
        per_col = jnp.einsum("rqw,ndpqhw->rqndph", mask_w, xv, precision=hi)
        sums = jnp.einsum("rph,rn,rqndph->rdpq", mask_h, image, per_col, precision=hi)
        area = ((he - hs)[:, :, None] * (we - ws)[:, None, :])                      # (R, G, G)
        empty = (area <= 0)[:, None]
        top = jnp.where(empty, jnp.zeros((), dt), sums / jnp.maximum(area, 1).astype(dt)[:, None])
        return [jnp.where(valid_b[:, None, None, None], top, jnp.asarray(jnp.nan, dt))]
