"""SSD's layers (Wei Liu's fork, github.com/weiliu89/caffe, branch ``ssd``): Normalize,
Permute, PriorBox and DetectionOutput (inference).

Their parameters live at netspec's private LayerParameter numbers (``norm_param`` 3500,
``permute_param`` 3501, ``prior_box_param`` 3502, ``detection_output_param`` 3503;
SSD's own are 206, 202, 203, 204); prototxts name them, so SSD's deploy files parse as
they are.

DetectionOutput's output size depends on the data (Caffe reshapes its top on every
forward).  A jitted net needs static shapes, so here the top has a fixed number of
rows, the most SSD can write (see ``DetectionOutput``), and SSD's rows come first,
followed by padding rows that are all -1.  SSD's rows always have image_id >= 0 (even
its "nothing detected" rows ``[i, -1, -1, ...]``), so ``detections(top)`` (rows with
image_id >= 0) is exactly SSD's top blob.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..proto import caffe_pb2
from .base import Layer, count, register

_FLT_MAX = float(np.finfo(np.float32).max)


def detections(top):
    """SSD's DetectionOutput blob from netspec's padded one: the rows of ``top``
    (shape (1, 1, R, 7) or (R, 7)) whose image_id is not -1, as an (n, 7) array."""
    rows = np.asarray(top).reshape(-1, 7)
    return rows[rows[:, 0] != -1]


def _constant_one():
    return caffe_pb2.FillerParameter(type="constant", value=1.0)


# ---------------------------------------------------------------- Normalize

@register("Normalize")
class Normalize(Layer):
    """SSD's L2 normalization with a learned scale (src/caffe/layers/normalize_layer.cpp).

    ``across_spatial``: one norm per sample over C*H*W; else one norm per pixel over C.
    The norm is ``sqrt(sum(x^2) + eps)`` (eps inside the root, added to the sum of
    squares, as SSD does).  The scale blob is a 0-axis blob (``channel_shared``) or
    (C,), filled by ``scale_filler`` (default constant 1).  Bottoms have 2 to 4 axes
    (Caffe's legacy channels/height/width accessors).

    The bottom gradient is SSD's backward, not autodiff's: SSD forms the dot product of
    x with the top diff *before* applying a per-channel scale, which equals the exact
    derivative only when the scale is the same for every channel.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    float32_compute = True

    def setup(self):
        shape = self.bottom_shapes[0]
        if not 2 <= len(shape) <= 4:
            raise self.error(f"bottom must have 2 to 4 axes, got shape {shape}")
        p = self.lp.norm_param
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = float(p.eps)
        self.channels = shape[1]
        self.spatial = count(shape[2:])

    def param_shapes(self):
        return [() if self.channel_shared else (self.channels,)]

    def param_fillers(self):
        p = self.lp.norm_param
        return [p.scale_filler if p.HasField("scale_filler") else _constant_one()]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        shape = x.shape
        x3 = x.reshape(shape[0], self.channels, self.spatial)
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        scale = params[0].astype(dtype)
        scale = scale.reshape(()) if self.channel_shared else scale.reshape(1, self.channels, 1)
        y = _normalize(self.across_spatial, self.eps)(x3.astype(dtype), scale)
        return [y.reshape(shape).astype(x.dtype)]


def _normalize(across_spatial, eps):
    axes = (1, 2) if across_spatial else (1,)

    def norm(x):
        return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True) + eps)

    @jax.custom_vjp
    def f(x, scale):
        return x / norm(x) * scale

    def fwd(x, scale):
        return f(x, scale), (x, scale)

    def bwd(res, g):
        x, scale = res
        n = norm(x)
        a = jnp.sum(x * g, axis=axes, keepdims=True)       # SSD: dot(x, top_diff), unscaled
        dx = (g - x * (a / (n * n))) / n * scale
        per_value = x / n * g                               # SSD: top_data * top_diff / scale
        if scale.ndim == 0:
            dscale = jnp.sum(per_value)
        else:
            dscale = jnp.sum(per_value, axis=(0, 2)).reshape(scale.shape)
        return dx, dscale

    f.defvjp(fwd, bwd)
    return f


# ---------------------------------------------------------------- Permute

@register("Permute")
class Permute(Layer):
    """SSD's axis permutation (src/caffe/layers/permute_layer.cpp): the listed ``order``
    first, then the unlisted axes in their original order."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        shape = self.bottom_shapes[0]
        ndim = len(shape)
        orders = []
        for axis in self.lp.permute_param.order:
            if axis >= ndim:
                raise self.error(f"order {axis} is not an axis of a bottom with {ndim} axes (shape {shape})")
            if axis in orders:
                raise self.error(f"order lists axis {axis} twice")
            orders.append(int(axis))
        orders += [i for i in range(ndim) if i not in orders]
        self.orders = tuple(orders)
        self.top_shape = tuple(shape[i] for i in orders)

    def top_shapes(self):
        return [self.top_shape]

    def forward(self, ctx, params, bottoms):
        return [jnp.transpose(bottoms[0], self.orders)]


# ---------------------------------------------------------------- PriorBox

def prior_boxes(layer_h, layer_w, img_h, img_w, min_sizes, max_sizes, aspect_ratios,
                step_h, step_w, offset, clip, variance):
    """SSD's PriorBoxLayer::Forward_cpu: a (1, 2, H*W*num_priors*4) float32 array.

    Per location (rows, then columns): per min size, the min-size square, the
    sqrt(min*max) square (when max sizes are given), then one box per aspect ratio
    other than 1.  Like SSD, min and max sizes are truncated to int first."""
    boxes = []
    for h in range(layer_h):
        for w in range(layer_w):
            cx = float(np.float32((w + offset) * np.float32(step_w)))
            cy = float(np.float32((h + offset) * np.float32(step_h)))
            for s, min_size in enumerate(min_sizes):
                size = int(min_size)
                sides = [(float(size), float(size))]
                if max_sizes:
                    side = float(np.float32(math.sqrt(size * int(max_sizes[s]))))
                    sides.append((side, side))
                for ar in aspect_ratios:
                    if abs(ar - 1.0) < 1e-6:
                        continue
                    root = np.sqrt(np.float32(ar))
                    sides.append((float(np.float32(size * root)), float(np.float32(size / root))))
                for bw, bh in sides:
                    boxes.append(((cx - bw / 2.0) / img_w, (cy - bh / 2.0) / img_h,
                                  (cx + bw / 2.0) / img_w, (cy + bh / 2.0) / img_h))
    coords = np.asarray(boxes, np.float32).reshape(-1)
    if clip:
        coords = np.clip(coords, 0.0, 1.0)
    variances = np.tile(np.asarray(variance, np.float32), coords.size // len(variance))
    return np.stack([coords, variances]).reshape(1, 2, coords.size)


@register("PriorBox")
class PriorBox(Layer):
    """SSD's prior (default) boxes (src/caffe/layers/prior_box_layer.cpp).

    Bottom 0 is the feature map (its H, W); bottom 1 the image (its H, W), unless
    ``img_size`` or ``img_h``/``img_w`` give the image size.  The step is ``step`` or
    ``step_h``/``step_w``, else image size / feature size.  The top (1, 2, H*W*P*4)
    holds the boxes (normalized xmin, ymin, xmax, ymax), then their variances;
    it depends only on shapes and is computed once, on the host.

    An aspect ratio r <= 0 produces no box (sqrt(r) is NaN or 0, so SSD would write
    NaN or infinite coordinates): it is refused here.  Ratios within 1e-6 of 1 or of an
    earlier ratio are ignored, as in SSD; ``flip`` adds 1/r for each new r.
    """

    min_bottoms, max_bottoms = 1, 2
    min_tops = max_tops = 1

    def setup(self):
        p = self.lp.prior_box_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"bottom 0 must be a 4-axis feature map, got shape {shape}")
        if not len(p.min_size):
            raise self.error("prior_box_param needs min_size (SSD requires at least one)")
        min_sizes = [float(v) for v in p.min_size]
        if min(min_sizes) <= 0:
            raise self.error(f"min_size must be positive, got {min_sizes}")
        max_sizes = [float(v) for v in p.max_size]
        if max_sizes and len(max_sizes) != len(min_sizes):
            raise self.error(f"give one max_size per min_size or none: {len(min_sizes)} min_size, "
                             f"{len(max_sizes)} max_size")
        for lo, hi in zip(min_sizes, max_sizes):
            if not hi > lo:
                raise self.error(f"max_size {hi:g} must be greater than min_size {lo:g}")
        ratios = [1.0]
        for ar in p.aspect_ratio:
            ar = float(ar)
            if not ar > 0:
                raise self.error(f"aspect_ratio {ar:g} produces no box (ratios must be > 0)")
            if any(abs(ar - r) < 1e-6 for r in ratios):
                continue
            ratios.append(ar)
            if p.flip:
                ratios.append(float(np.float32(1.0 / ar)))
        variance = [float(v) for v in p.variance]
        if len(variance) not in (0, 1, 4):
            raise self.error(f"variance takes 1 or 4 values (or none: 0.1), got {len(variance)}")
        if any(v <= 0 for v in variance):
            raise self.error(f"variance must be positive, got {variance}")
        variance = variance or [0.1]
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise self.error("give img_size or img_h/img_w, not both")
            if p.img_h <= 0 or p.img_w <= 0:
                raise self.error(f"img_h and img_w must be > 0, got {p.img_h}, {p.img_w}")
            img_h, img_w = p.img_h, p.img_w
        elif p.HasField("img_size"):
            if p.img_size <= 0:
                raise self.error("img_size must be > 0")
            img_h = img_w = p.img_size
        else:
            if len(self.bottom_shapes) < 2 or len(self.bottom_shapes[1]) != 4:
                raise self.error("needs the image as a 4-axis bottom 1, or img_size / img_h and img_w")
            img_h, img_w = self.bottom_shapes[1][2:]
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise self.error("give step or step_h/step_w, not both")
            if not (p.step_h > 0 and p.step_w > 0):
                raise self.error(f"step_h and step_w must be > 0, got {p.step_h:g}, {p.step_w:g}")
            step_h, step_w = p.step_h, p.step_w
        elif p.HasField("step"):
            if not p.step > 0:
                raise self.error("step must be > 0")
            step_h = step_w = p.step
        else:
            step_h, step_w = np.float32(img_h) / shape[2], np.float32(img_w) / shape[3]
        self.num_priors = len(ratios) * len(min_sizes) + len(max_sizes)
        if shape[2] * shape[3] == 0:
            raise self.error(f"bottom 0 has an empty feature map {shape}: no boxes")
        self.priors = prior_boxes(shape[2], shape[3], img_h, img_w, min_sizes, max_sizes, ratios,
                                  step_h, step_w, float(np.float32(p.offset)), bool(p.clip), variance)

    def top_shapes(self):
        return [self.priors.shape]

    def forward(self, ctx, params, bottoms):
        return [jnp.asarray(self.priors)]


# ---------------------------------------------------------------- DetectionOutput

CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


def decode_boxes(priors, variances, loc, code_type, variance_encoded_in_target):
    """SSD's DecodeBBox (src/caffe/util/bbox_util.cpp) for arrays of boxes (..., 4)."""
    priors = priors.astype(np.float32)
    loc = loc.astype(np.float32)
    var = np.ones_like(variances, np.float32) if variance_encoded_in_target else variances.astype(np.float32)
    pw = priors[..., 2] - priors[..., 0]
    ph = priors[..., 3] - priors[..., 1]
    if code_type == CORNER:
        out = priors + var * loc
    elif code_type == CORNER_SIZE:
        out = priors + var * loc * np.stack([pw, ph, pw, ph], -1)
    elif code_type == CENTER_SIZE:
        pcx = (priors[..., 0] + priors[..., 2]) / np.float32(2)
        pcy = (priors[..., 1] + priors[..., 3]) / np.float32(2)
        cx = var[..., 0] * loc[..., 0] * pw + pcx
        cy = var[..., 1] * loc[..., 1] * ph + pcy
        w = np.exp(var[..., 2] * loc[..., 2]) * pw
        h = np.exp(var[..., 3] * loc[..., 3]) * ph
        out = np.stack([cx - w / np.float32(2), cy - h / np.float32(2),
                        cx + w / np.float32(2), cy + h / np.float32(2)], -1)
    else:
        raise ValueError(f"unknown code_type {code_type}")
    return out.astype(np.float32)


def _box_sizes(boxes):
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.where((w < 0) | (h < 0), np.float32(0), w * h).astype(np.float32)


def nms_fast(boxes, scores, score_threshold, nms_threshold, eta, top_k):
    """SSD's ApplyNMSFast: indices kept, in descending score order (stable for ties)."""
    candidates = [i for i in range(len(scores)) if scores[i] > score_threshold]
    candidates.sort(key=lambda i: -scores[i])              # Python's sort is stable
    if top_k > -1:
        candidates = candidates[:top_k]
    sizes = _box_sizes(boxes)
    kept = []
    threshold = nms_threshold
    for i in candidates:
        keep = True
        for k in kept:
            b1, b2 = boxes[i], boxes[k]
            if b2[0] > b1[2] or b2[2] < b1[0] or b2[1] > b1[3] or b2[3] < b1[1]:
                overlap = 0.0
            else:
                iw = np.float32(min(b1[2], b2[2]) - max(b1[0], b2[0]))
                ih = np.float32(min(b1[3], b2[3]) - max(b1[1], b2[1]))
                if iw > 0 and ih > 0:
                    inter = np.float32(iw * ih)
                    overlap = np.float32(inter / (sizes[i] + sizes[k] - inter))
                else:
                    overlap = 0.0
            if not overlap <= threshold:
                keep = False
                break
        if keep:
            kept.append(i)
            if eta < 1 and threshold > 0.5:
                threshold = float(np.float32(threshold * eta))
    return kept


def detection_output(loc, conf, prior, num_classes, share_location=True, background_label_id=0,
                     code_type=CORNER, variance_encoded_in_target=False, keep_top_k=-1,
                     confidence_threshold=-_FLT_MAX, nms_threshold=0.3, eta=1.0, top_k=-1):
    """SSD's DetectionOutputLayer::Forward_cpu on NumPy arrays: the (n, 7) rows
    [image_id, label, score, xmin, ymin, xmax, ymax] that SSD writes."""
    num = loc.shape[0]
    num_priors = prior.reshape(2, -1).shape[1] // 4
    loc_classes = 1 if share_location else num_classes
    loc = loc.reshape(num, num_priors, loc_classes, 4)
    conf = conf.reshape(num, num_priors, num_classes).astype(np.float32)
    prior = prior.reshape(2, num_priors, 4)
    rows = []
    for i in range(num):
        decoded = decode_boxes(prior[0][:, None, :], prior[1][:, None, :], loc[i], code_type,
                               variance_encoded_in_target)                    # (P, loc_classes, 4)
        indices = {}
        for c in range(num_classes):
            if c == background_label_id:
                continue
            boxes = decoded[:, 0 if share_location else c]
            indices[c] = nms_fast(boxes, conf[i, :, c], confidence_threshold, nms_threshold, eta, top_k)
        num_det = sum(len(v) for v in indices.values())
        if keep_top_k > -1 and num_det > keep_top_k:
            pairs = [(conf[i, idx, c], c, idx) for c, kept in sorted(indices.items()) for idx in kept]
            pairs.sort(key=lambda t: -t[0])
            indices = {}
            for _, c, idx in pairs[:keep_top_k]:
                indices.setdefault(c, []).append(idx)
        for c in sorted(indices):
            boxes = decoded[:, 0 if share_location else c]
            for idx in indices[c]:
                rows.append([i, c, conf[i, idx, c], *boxes[idx]])
    if not rows:
        return np.array([[i] + [-1] * 6 for i in range(num)], np.float32).reshape(-1, 7)
    return np.asarray(rows, np.float32).reshape(-1, 7)


@register("DetectionOutput")
class DetectionOutput(Layer):
    """SSD's detection output, inference only (src/caffe/layers/detection_output_layer.cpp
    with src/caffe/util/bbox_util.cpp): decode the location predictions (bottom 0, N x
    P*L*4, L = 1 with ``share_location`` else num_classes) against the priors (bottom 2,
    PriorBox's (1, 2, P*4)), per-class NMS (``nms_param``: nms_threshold, top_k, eta)
    on the scores (bottom 1, N x P*num_classes, e.g. softmax output) above
    ``confidence_threshold``, skipping ``background_label_id``, then the best
    ``keep_top_k`` per image across classes.  Saving to files and visualizing are not
    done.

    Top: (1, 1, R, 7) rows [image_id, label, score, xmin, ymin, xmax, ymax].  SSD's
    top has as many rows as detections (or one row [i, -1, -1, -1, -1, -1, -1] per
    image when nothing is detected); netspec's has R = N * keep_top_k rows (N * number
    of non-background classes * min(top_k, P) without keep_top_k; at least N), SSD's
    rows first, then rows of -1.  ``netspec.layers.ssd.detections(top)`` drops the
    padding.  The computation runs on the host (``jax.pure_callback``) and has no
    gradient.
    """

    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 1
    float32_compute = True

    def setup(self):
        p = self.lp.detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("detection_output_param needs num_classes")
        self.num_classes = int(p.num_classes)
        self.share_location = bool(p.share_location)
        self.background_label_id = int(p.background_label_id)
        self.code_type = int(p.code_type)
        self.variance_encoded_in_target = bool(p.variance_encoded_in_target)
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = float(p.confidence_threshold) if p.HasField("confidence_threshold") \
            else -_FLT_MAX
        nms = p.nms_param
        self.nms_threshold = float(nms.nms_threshold)
        self.eta = float(nms.eta)
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        if self.nms_threshold < 0:
            raise self.error(f"nms_threshold must be >= 0, got {self.nms_threshold:g}")
        if not 0 < self.eta <= 1:
            raise self.error(f"eta must be in (0, 1], got {self.eta:g}")
        loc, conf, prior = self.bottom_shapes
        if loc[0] != conf[0]:
            raise self.error(f"location (bottom 0, {loc}) and confidence (bottom 1, {conf}) "
                             "predictions have different batch sizes")
        if len(prior) < 3 or prior[1] != 2 or count(prior[2:]) % 4:
            raise self.error(f"bottom 2 must be PriorBox's (1, 2, num_priors*4) blob, got shape {prior}")
        self.num_priors = count(prior[2:]) // 4
        loc_classes = 1 if self.share_location else self.num_classes
        if self.num_priors * loc_classes * 4 != count(loc[1:]):
            raise self.error(f"{self.num_priors} priors need {self.num_priors * loc_classes * 4} location "
                             f"predictions per image, bottom 0 {loc} has {count(loc[1:])}")
        if self.num_priors * self.num_classes != count(conf[1:]):
            raise self.error(f"{self.num_priors} priors x {self.num_classes} classes need "
                             f"{self.num_priors * self.num_classes} confidences per image, "
                             f"bottom 1 {conf} has {count(conf[1:])}")
        if self.keep_top_k > -1:
            per_image = self.keep_top_k
        else:
            classes = self.num_classes - (0 <= self.background_label_id < self.num_classes)
            per_class = self.num_priors if self.top_k < 0 else min(self.top_k, self.num_priors)
            per_image = classes * per_class
        self.rows = max(loc[0] * per_image, loc[0], 1)

    def top_shapes(self):
        return [(1, 1, self.rows, 7)]

    def _host(self, loc, conf, prior):
        found = detection_output(
            np.asarray(loc), np.asarray(conf), np.asarray(prior), self.num_classes, self.share_location,
            self.background_label_id, self.code_type, self.variance_encoded_in_target, self.keep_top_k,
            self.confidence_threshold, self.nms_threshold, self.eta, self.top_k)
        out = np.full((self.rows, 7), -1, np.float32)
        out[:len(found)] = found
        return out.reshape(1, 1, self.rows, 7)

    def forward(self, ctx, params, bottoms):
        loc, conf, prior = (jax.lax.stop_gradient(b.astype(jnp.float32)) for b in bottoms)
        out = jax.ShapeDtypeStruct((1, 1, self.rows, 7), jnp.float32)
        return [jax.pure_callback(self._host, out, loc, conf, prior)]
