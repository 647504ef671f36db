"""Softmax, the loss layers and Accuracy, with Caffe's normalization and backward rules.

Loss tops are 0-axis blobs (shape ``()``); the net compiler applies ``loss_weight``.
Labels arrive as float blobs and are truncated to int like Caffe's ``static_cast<int>``.
No layer here sends a gradient to its label (or infogain matrix) bottom.

Labels out of range (neither a class index nor ``ignore_label``) are undefined
behaviour in Caffe (a debug-only DCHECK, then out-of-bounds reads).  Here they make
the loss NaN (SoftmaxWithLoss, InfogainLoss, MultinomialLogisticLoss) so the solver's
loss display shows it; Accuracy counts them as misses and leaves them out of the
per-class counts; HingeLoss treats them as "no true class".
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import NetspecError
from ..proto import caffe_pb2
from .base import Layer, channels_last_axis, count, register

FLT_MIN = float(np.finfo(np.float32).tiny)   # Caffe's floor under softmax probabilities
LOG_THRESHOLD = 1e-20                         # Caffe's kLOG_THRESHOLD (MultinomialLogistic, Infogain)

_NORM = caffe_pb2.LossParameter


# -- shared helpers -----------------------------------------------------------

def _one_label_per_prediction(layer, scores, labels, axis_name):
    """(outer, inner) counts around ``layer.axis``; the labels must hold one per prediction."""
    outer, inner = count(scores[:layer.axis]), count(scores[layer.axis + 1:])
    _check_same_num(layer)
    if outer * inner != count(labels):
        raise layer.error(
            f"label count must equal the number of predictions: scores {scores} with "
            f"{axis_name} {layer.axis} need {outer * inner} labels, "
            f"label shape {labels} has {count(labels)}")
    return outer, inner


def _storage_order(ndim, channels_last):
    """Caffe axis held by each storage axis."""
    if channels_last and ndim >= 3:
        return [0] + list(range(2, ndim)) + [1]
    return list(range(ndim))


def _labels_for(layer, label, x_shape, axis):
    """Label bottom as int32, shaped like the stored prediction with ``axis`` removed.

    ``x_shape`` is the prediction's Caffe shape and ``axis`` its class axis (Caffe
    numbering).  Works for NCHW and channels-last storage alike: the label goes back
    to Caffe order, is reshaped to the prediction's positions, then permuted the way
    the prediction is stored.
    """
    if layer.channels_last and label.ndim >= 3:
        label = jnp.moveaxis(label, -1, 1)
    ndim = len(x_shape)
    kept = [c for c in range(ndim) if c != axis]
    label = label.reshape([x_shape[c] for c in kept])
    stored_kept = [c for c in _storage_order(ndim, layer.channels_last) if c != axis]
    label = jnp.transpose(label, [kept.index(c) for c in stored_kept])
    return jax.lax.stop_gradient(label).astype(jnp.int32)


def _positions_inside(ctx, layer, x_shape, axis):
    """In a padded pass, the mask of prediction positions (the stored prediction with
    its class ``axis`` removed, as ``_labels_for`` shapes the labels) inside the true
    extent; None otherwise.  Only for 4-axis predictions with the class axis 1."""
    if ctx.extent(0) is None or len(x_shape) != 4 or axis != 1:
        return None
    # positions are (N, H, W) in either storage order
    return ctx.inside(0, (x_shape[0], x_shape[2], x_shape[3]), 1)


def _true_inner(ctx, inner):
    """The positions per item (``inner``) counted from the true extent in a padded pass."""
    extent = ctx.extent(0)
    return inner if extent is None else extent[0] * extent[1]


def _stored_axis(layer, axis, ndim):
    return channels_last_axis(axis, ndim) if layer.channels_last else axis


def _normalization_mode(layer, allow_legacy=True, default=None):
    """Caffe's rule: ``normalization`` if given, else legacy ``normalize`` (true -> VALID,
    false -> BATCH_SIZE), else ``default`` (the proto default VALID unless stated)."""
    lp = layer.lp.loss_param
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        if not allow_legacy:
            raise layer.error('loss_param.normalize is deprecated for this layer; '
                              'use "normalization: VALID" (or FULL, BATCH_SIZE, NONE)')
        return _NORM.VALID if lp.normalize else _NORM.BATCH_SIZE
    return lp.normalization if default is None else default


def _normalizer(mode, outer, inner, valid_count, dtype):
    """Caffe's LossLayer::GetNormalizer, clamped to at least 1 (``inner`` may be a
    runtime count in a padded pass)."""
    if mode == _NORM.FULL:
        value = (outer * jnp.asarray(inner)).astype(dtype)
    elif mode == _NORM.VALID:
        value = valid_count.astype(dtype)
    elif mode == _NORM.BATCH_SIZE:
        value = jnp.asarray(outer, dtype)
    else:
        value = jnp.asarray(1, dtype)
    return jnp.maximum(value, jnp.asarray(1, dtype))


def _ignore_label(param):
    return param.ignore_label if param.HasField("ignore_label") else None


def _valid_mask(labels, ignore_label):
    if ignore_label is None:
        return jnp.ones(labels.shape, bool)
    return labels != ignore_label


def _check_same_num(layer, i=1):
    """LossLayer::Reshape: prediction and label agree on the first axis."""
    a, b = layer.bottom_shapes[0], layer.bottom_shapes[i]
    if len(a) and len(b) and a[0] != b[0]:
        raise layer.error(f"bottoms must have the same first dimension; got shapes {a} and {b}")


def _softmax(x, axis):
    """Caffe's Softmax: subtract the max along ``axis``, exponentiate, divide by the sum."""
    e = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


class _LossLayer(Layer):
    is_loss = True
    float32_compute = True
    min_tops, max_tops = 1, 1

    def top_shapes(self):
        return [()]


# -- Softmax ------------------------------------------------------------------

@register("Softmax")
class Softmax(Layer):
    """Softmax over ``softmax_param.axis`` (default 1, the channels)."""
    float32_compute = True
    min_bottoms, max_bottoms = 1, 1
    min_tops, max_tops = 1, 1
    channels_last = True

    def setup(self):
        shape = self.bottom_shapes[0]
        self.axis = self.canonical_axis(self.lp.softmax_param.axis, len(shape))

    @property
    def spatially_local(self):
        return self.axis == 1

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        return [jax.nn.softmax(x, axis=_stored_axis(self, self.axis, x.ndim))]


# -- SoftmaxWithLoss ------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_nll(x, labels, valid, axis):
    """Sum over valid positions of -log(max(p_label, FLT_MIN)), and the probabilities.

    Backward is Caffe's: (p - onehot) at valid positions, 0 at ignored ones, no
    gradient through the FLT_MIN floor and none from the probability output.
    """
    return _softmax_nll_fwd(x, labels, valid, axis)[0]


def _softmax_nll_fwd(x, labels, valid, axis):
    p = _softmax(x, axis)
    classes = x.shape[axis]
    in_range = (labels >= 0) & (labels < classes)
    safe = jnp.where(in_range, labels, 0)
    p_label = jnp.take_along_axis(p, jnp.expand_dims(safe, axis), axis=axis)
    p_label = jnp.squeeze(p_label, axis)
    nll = -jnp.log(jnp.maximum(p_label, jnp.asarray(FLT_MIN, x.dtype)))
    nll = jnp.where(in_range, nll, jnp.nan)
    total = jnp.sum(jnp.where(valid, nll, 0))
    return (total, p), (p, labels, valid)


def _softmax_nll_bwd(axis, residuals, cotangents):
    p, labels, valid = residuals
    g_total = cotangents[0]          # the probability top's diff is ignored, as in Caffe
    class_index = jax.lax.broadcasted_iota(jnp.int32, p.shape, axis)
    onehot = (class_index == jnp.expand_dims(labels, axis)).astype(p.dtype)
    grad = jnp.where(jnp.expand_dims(valid, axis), p - onehot, 0) * g_total
    return grad, None, None


_softmax_nll.defvjp(_softmax_nll_fwd, _softmax_nll_bwd)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(_LossLayer):
    """Multinomial logistic loss of the softmax over ``softmax_param.axis``.

    Bottoms: scores, labels (count = positions with the class axis removed).
    Tops: the loss, optionally the softmax probabilities.
    """
    min_bottoms, max_bottoms = 2, 2
    min_tops, max_tops = 1, 2
    channels_last = True

    def setup(self):
        scores, labels = self.bottom_shapes
        self.axis = self.canonical_axis(self.lp.softmax_param.axis, len(scores))
        self.outer, self.inner = _one_label_per_prediction(self, scores, labels, "softmax axis")
        self.ignore_label = _ignore_label(self.lp.loss_param)
        self.normalization = _normalization_mode(self)

    def top_shapes(self):
        return [()] + [self.bottom_shapes[0]] * (self.num_tops - 1)

    @property
    def spatially_local(self):
        return self.axis == 1

    def top_extents(self, bottom_extents):
        return [None] + [bottom_extents[0]] * (self.num_tops - 1)

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        axis = _stored_axis(self, self.axis, x.ndim)
        labels = _labels_for(self, bottoms[1], self.bottom_shapes[0], self.axis)
        valid = _valid_mask(labels, self.ignore_label)
        inside = _positions_inside(ctx, self, self.bottom_shapes[0], self.axis)
        if inside is not None:      # labels outside the image are ignored
            valid = valid & inside
        total, p = _softmax_nll(x, labels, valid, axis)
        norm = _normalizer(self.normalization, self.outer, _true_inner(ctx, self.inner),
                           jnp.sum(valid), x.dtype)
        loss = total / norm
        return [loss, p][:self.num_tops]


# -- SigmoidCrossEntropyLoss ----------------------------------------------------

@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_LossLayer):
    """Cross-entropy of sigmoid(x) against targets in [0, 1]; ``ignore_label`` drops
    elements; default normalization BATCH_SIZE (Caffe's choice for this layer)."""
    min_bottoms, max_bottoms = 2, 2

    def setup(self):
        x, t = self.bottom_shapes
        _check_same_num(self)
        if count(x) != count(t):
            raise self.error(f"inputs must have the same count; got shapes {x} and {t}")
        self.outer = x[0] if len(x) else 1
        self.inner = count(x[1:])
        self.ignore_label = _ignore_label(self.lp.loss_param)
        self.normalization = _normalization_mode(self, default=_NORM.BATCH_SIZE)

    @property
    def spatially_local(self):
        return self.bottom_shapes[0] == self.bottom_shapes[1]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        target = jax.lax.stop_gradient(bottoms[1]).reshape(x.shape).astype(x.dtype)
        valid = _valid_mask(target.astype(jnp.int32), self.ignore_label)
        inner = self.inner
        inside = ctx.inside(0, x.shape, 2) if x.ndim == 4 else None
        if inside is not None:
            valid = valid & inside
            inner = x.shape[1] * _true_inner(ctx, 1)
        # Caffe's stable form; the indicator (x >= 0) carries no gradient, so the
        # derivative is exactly sigmoid(x) - target, Caffe's backward.
        positive = jax.lax.stop_gradient((x >= 0).astype(x.dtype))
        log_likelihood = x * (target - positive) - jnp.log(1 + jnp.exp(x - 2 * x * positive))
        total = -jnp.sum(jnp.where(valid, log_likelihood, 0))
        norm = _normalizer(self.normalization, self.outer, inner, jnp.sum(valid), x.dtype)
        return [total / norm]


# -- EuclideanLoss ----------------------------------------------------------------

@register("EuclideanLoss")
class EuclideanLoss(_LossLayer):
    """sum((a - b)^2) / (2 N); gradients to both bottoms."""
    min_bottoms, max_bottoms = 2, 2

    def setup(self):
        a, b = self.bottom_shapes
        _check_same_num(self)
        if count(a[1:]) != count(b[1:]):
            raise self.error(f"inputs must have the same dimension; got shapes {a} and {b}")

    @property
    def spatially_local(self):
        return self.bottom_shapes[0] == self.bottom_shapes[1]

    def forward(self, ctx, params, bottoms):
        a, b = bottoms
        diff = a - b.reshape(a.shape)
        inside = ctx.inside(0, a.shape, 2) if a.ndim == 4 else None
        if inside is not None:
            diff = jnp.where(inside, diff, 0)
        num = self.bottom_shapes[0][0]
        return [jnp.sum(diff * diff) / num / 2]


# -- HingeLoss ------------------------------------------------------------------

@register("HingeLoss")
class HingeLoss(_LossLayer):
    """One-vs-all hinge loss: sum_k max(0, 1 - s_k x_k) / N, s = +1 for the label,
    -1 otherwise; squared with ``norm: L2``.  At the hinge (margin exactly 0) the
    gradient is 0, Caffe's sign(0)."""
    min_bottoms, max_bottoms = 2, 2

    def setup(self):
        x, labels = self.bottom_shapes
        _check_same_num(self)
        self.num = x[0]
        self.dim = count(x) // self.num
        if count(labels) != self.num:
            raise self.error(f"needs one label per item: scores {x}, label shape {labels}")
        self.squared = self.lp.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2

    def forward(self, ctx, params, bottoms):
        x = bottoms[0].reshape(self.num, self.dim)
        labels = jax.lax.stop_gradient(bottoms[1]).reshape(self.num).astype(jnp.int32)
        is_label = jnp.arange(self.dim)[None, :] == labels[:, None]
        sign = jnp.where(is_label, -1, 1).astype(x.dtype)
        margin = 1 + sign * x
        hinge = jnp.where(margin > 0, margin, 0)
        loss = jnp.sum(hinge * hinge) if self.squared else jnp.sum(hinge)
        return [loss / self.num]


# -- MultinomialLogisticLoss -------------------------------------------------------

@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_LossLayer):
    """-sum log(max(p[label], 1e-20)) / N over probabilities p (no softmax inside).

    Caffe's backward is -1 / max(p, 1e-20) at the label, also below the floor."""
    min_bottoms, max_bottoms = 2, 2

    def setup(self):
        p, labels = self.bottom_shapes
        _check_same_num(self)
        self.num = p[0]
        self.dim = count(p) // self.num
        if count(labels) != self.num:
            raise self.error(f"needs one label per item (label shape N x 1 x 1 x 1): "
                             f"probabilities {p}, label shape {labels}")

    def forward(self, ctx, params, bottoms):
        p = bottoms[0].reshape(self.num, self.dim)
        labels = jax.lax.stop_gradient(bottoms[1]).reshape(self.num).astype(jnp.int32)
        in_range = (labels >= 0) & (labels < self.dim)
        safe = jnp.where(in_range, labels, 0)
        p_label = jnp.take_along_axis(p, safe[:, None], axis=1)[:, 0]
        floored = jnp.maximum(p_label, jnp.asarray(LOG_THRESHOLD, p.dtype))
        # value of the floored probability, gradient 1 w.r.t. p_label (Caffe's rule)
        floored = jax.lax.stop_gradient(floored - p_label) + p_label
        nll = jnp.where(in_range, -jnp.log(floored), jnp.nan)
        return [jnp.sum(nll) / self.num]


# -- InfogainLoss -----------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _softmax_infogain(x, weights, axis):
    """-sum(weights * log(max(softmax(x), 1e-20))) and the probabilities.

    ``weights`` holds row H[label] at every valid position (zeros where ignored).
    Backward is Caffe's: p * sum(weights) - weights, no gradient to the weights.
    """
    return _softmax_infogain_fwd(x, weights, axis)[0]


def _softmax_infogain_fwd(x, weights, axis):
    p = _softmax(x, axis)
    log_p = jnp.log(jnp.maximum(p, jnp.asarray(LOG_THRESHOLD, x.dtype)))
    return (-jnp.sum(weights * log_p), p), (p, weights)


def _softmax_infogain_bwd(axis, residuals, cotangents):
    p, weights = residuals
    grad = (p * jnp.sum(weights, axis=axis, keepdims=True) - weights) * cotangents[0]
    return grad, None


_softmax_infogain.defvjp(_softmax_infogain_fwd, _softmax_infogain_bwd)


def read_infogain_matrix(path):
    """The H matrix of an InfogainLoss ``source``: a binary BlobProto, as a flat float array."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise NetspecError(f"{path}: cannot read the infogain matrix ({e.strerror}); "
                           "check infogain_loss_param.source") from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(raw)
    except Exception:
        raise NetspecError(f"{path}: not a binary BlobProto; write H with "
                           "BlobProto.SerializeToString()") from None
    values = blob.double_data if len(blob.double_data) else blob.data
    return np.asarray(values, np.float64)


@register("InfogainLoss")
class InfogainLoss(_LossLayer):
    """Softmax over ``infogain_loss_param.axis`` then -sum_l H[label, l] log p_l,
    normalized per ``loss_param.normalization`` (default VALID).  H is the third
    bottom (K x K values) or the BlobProto file ``infogain_loss_param.source``."""
    min_bottoms, max_bottoms = 2, 3
    min_tops, max_tops = 1, 2

    def setup(self):
        scores, labels = self.bottom_shapes[:2]
        self.axis = self.canonical_axis(self.lp.infogain_loss_param.axis, len(scores))
        self.classes = scores[self.axis]
        self.outer, self.inner = _one_label_per_prediction(self, scores, labels, "axis")
        self.ignore_label = _ignore_label(self.lp.loss_param)
        self.normalization = _normalization_mode(self, allow_legacy=False)
        k2 = self.classes * self.classes
        if len(self.bottom_shapes) == 3:
            self.matrix = None
            if count(self.bottom_shapes[2]) != k2:
                raise self.error(f"the infogain matrix bottom must hold {self.classes} x "
                                 f"{self.classes} values; got shape {self.bottom_shapes[2]}")
        else:
            source = self.lp.infogain_loss_param.source
            if not source:
                raise self.error("needs the infogain matrix: give a third bottom or "
                                 "infogain_loss_param.source")
            self.matrix = read_infogain_matrix(source)
            if self.matrix.size != k2:
                raise self.error(f"{source}: the infogain matrix must hold {self.classes} x "
                                 f"{self.classes} values, it has {self.matrix.size}")
            self.matrix = self.matrix.reshape(self.classes, self.classes)

    def top_shapes(self):
        return [()] + [self.bottom_shapes[0]] * (self.num_tops - 1)

    @property
    def spatially_local(self):
        return self.axis == 1

    def top_extents(self, bottom_extents):
        return [None] + [bottom_extents[0]] * (self.num_tops - 1)

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        if self.matrix is None:
            h = jax.lax.stop_gradient(bottoms[2]).reshape(self.classes, self.classes)
        else:
            h = jnp.asarray(self.matrix)
        h = h.astype(x.dtype)
        labels = _labels_for(self, bottoms[1], self.bottom_shapes[0], self.axis)
        valid = _valid_mask(labels, self.ignore_label)
        inside = _positions_inside(ctx, self, self.bottom_shapes[0], self.axis)
        if inside is not None:
            valid = valid & inside
        in_range = (labels >= 0) & (labels < self.classes)
        rows = h[jnp.where(in_range, labels, 0)]              # positions x K
        rows = jnp.where((valid & in_range)[..., None], rows, 0)
        weights = jnp.moveaxis(rows, -1, self.axis)
        total, p = _softmax_infogain(x, weights, self.axis)
        total = jnp.where(jnp.any(valid & ~in_range), jnp.nan, total)
        norm = _normalizer(self.normalization, self.outer, _true_inner(ctx, self.inner),
                           jnp.sum(valid), x.dtype)
        return [total / norm, p][:self.num_tops]


# -- ContrastiveLoss ----------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _contrastive(a, b, similar, margin, legacy):
    """Caffe's contrastive loss of rows of ``a``, ``b`` (N x C) with Caffe's backward."""
    return _contrastive_fwd(a, b, similar, margin, legacy)[0]


def _contrastive_fwd(a, b, similar, margin, legacy):
    diff = a - b
    dist_sq = jnp.sum(diff * diff, axis=1)
    zero = jnp.zeros_like(dist_sq)
    if legacy:
        dissimilar = jnp.maximum(margin - dist_sq, zero)
    else:
        dissimilar = jnp.maximum(margin - jnp.sqrt(dist_sq), zero) ** 2
    per_pair = jnp.where(similar, dist_sq, dissimilar)
    num = a.shape[0]
    return jnp.sum(per_pair) / num / 2, (diff, dist_sq, similar)


def _contrastive_bwd(margin, legacy, residuals, g):
    diff, dist_sq, similar = residuals
    alpha = g / diff.shape[0]
    if legacy:
        mdist = margin - dist_sq
        beta = -alpha * jnp.ones_like(dist_sq)
    else:
        dist = jnp.sqrt(dist_sq)
        mdist = margin - dist
        beta = -alpha * mdist / (dist + 1e-4)     # Caffe's 1e-4 guard
    coef = jnp.where(similar, alpha, jnp.where(mdist > 0, beta, 0))
    grad_a = coef[:, None] * diff
    return grad_a, -grad_a, None


_contrastive.defvjp(_contrastive_fwd, _contrastive_bwd)


@register("ContrastiveLoss")
class ContrastiveLoss(_LossLayer):
    """Bottoms a, b (N x C x 1 x 1) and similarity y (N): similar pairs add d^2,
    dissimilar ones max(margin - d, 0)^2 (legacy: max(margin - d^2, 0)); / 2N."""
    min_bottoms, max_bottoms = 3, 3

    def setup(self):
        a, b, y = self.bottom_shapes
        _check_same_num(self)
        _check_same_num(self, 2)
        for s in (a, b):
            if len(s) < 2 or any(d != 1 for d in s[2:]):
                raise self.error(f"feature bottoms must be N x C x 1 x 1; got shapes {a} and {b}")
        if a[:2] != b[:2]:
            raise self.error(f"feature bottoms must have the same shape; got {a} and {b}")
        if count(y) != a[0]:
            raise self.error(f"the similarity bottom needs one value per pair; "
                             f"got shape {y} for features {a}")
        self.num, self.channels = a[0], a[1]
        self.margin = float(self.lp.contrastive_loss_param.margin)
        self.legacy = bool(self.lp.contrastive_loss_param.legacy_version)

    def forward(self, ctx, params, bottoms):
        a = bottoms[0].reshape(self.num, self.channels)
        b = bottoms[1].reshape(self.num, self.channels)
        similar = jax.lax.stop_gradient(bottoms[2]).reshape(self.num).astype(jnp.int32) != 0
        return [_contrastive(a, b, similar, self.margin, self.legacy)]


# -- Accuracy -------------------------------------------------------------------------

@register("Accuracy")
class Accuracy(Layer):
    """Top-k accuracy along ``accuracy_param.axis``; optional per-class accuracy top.

    Caffe's rule: a position is a hit when fewer than ``top_k`` other classes score
    greater than or equal to the true class (ties count against the label).  Ignored
    labels are left out of the count; an empty count gives 0.  No gradient.
    """
    min_bottoms, max_bottoms = 2, 2
    min_tops, max_tops = 1, 2
    channels_last = True
    float32_compute = True

    def setup(self):
        scores, labels = self.bottom_shapes
        param = self.lp.accuracy_param
        self.axis = self.canonical_axis(param.axis, len(scores))
        self.classes = scores[self.axis]
        self.top_k = int(param.top_k)
        positions = count(scores[:self.axis]) * count(scores[self.axis + 1:])
        if positions != count(labels):
            raise self.error(
                f"label count must equal the number of predictions: scores {scores} with "
                f"axis {self.axis} need {positions} labels, label shape {labels} has "
                f"{count(labels)}")
        if self.top_k > count(scores) // max(count(labels), 1):
            raise self.error(f"top_k {self.top_k} exceeds the number of classes "
                             f"({self.classes}) of scores {scores}")
        self.ignore_label = _ignore_label(param)

    def top_shapes(self):
        return [()] + [(self.classes,)] * (self.num_tops - 1)

    @property
    def spatially_local(self):
        return self.axis == 1

    def forward(self, ctx, params, bottoms):
        x = jax.lax.stop_gradient(bottoms[0])
        axis = _stored_axis(self, self.axis, x.ndim)
        labels = _labels_for(self, bottoms[1], self.bottom_shapes[0], self.axis)
        valid = _valid_mask(labels, self.ignore_label)
        inside = _positions_inside(ctx, self, self.bottom_shapes[0], self.axis)
        if inside is not None:
            valid = valid & inside
        in_range = (labels >= 0) & (labels < self.classes)
        safe = jnp.expand_dims(jnp.where(in_range, labels, 0), axis)
        true_score = jnp.take_along_axis(x, safe, axis=axis)
        at_least_as_good = jnp.sum(x >= true_score, axis=axis) - 1
        hit = valid & in_range & (at_least_as_good < self.top_k)
        count = jnp.sum(valid)
        accuracy = jnp.where(count > 0, jnp.sum(hit) / jnp.maximum(count, 1), 0).astype(x.dtype)
        tops = [accuracy]
        if self.num_tops > 1:
            class_ids = jnp.arange(self.classes)
            of_class = (labels[..., None] == class_ids) & (valid & in_range)[..., None]
            per_class_count = jnp.sum(of_class, axis=tuple(range(labels.ndim)))
            per_class_hits = jnp.sum(of_class & hit[..., None], axis=tuple(range(labels.ndim)))
            per_class = jnp.where(per_class_count > 0,
                                  per_class_hits / jnp.maximum(per_class_count, 1), 0)
            tops.append(per_class.astype(x.dtype))
        return tops
