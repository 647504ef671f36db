"""Utility layers: normalization, scaling, blob arithmetic and blob plumbing.

BatchNorm, Scale, Bias, Concat and Slice compute in channels-last storage for blobs
of three or more axes (so ResNet-style conv/BN/Scale chains need no layout changes);
they map Caffe axes to storage axes with ``_storage_axis``.  Eltwise and Split work
on any layout.  The remaining layers reshape or reduce by Caffe axis and take plain
NCHW arrays.
"""

import jax.numpy as jnp
from jax import lax

from ..proto import caffe_pb2
from .base import Layer, channels_last_axis, count, register

P = caffe_pb2


# -- helpers -----------------------------------------------------------------

def _constant_filler(value):
    filler = P.FillerParameter()
    filler.type = "constant"
    filler.value = value
    return filler


def _storage_axis(layer, caffe_axis, ndim):
    """Where a Caffe axis lives in the array ``layer`` receives."""
    return channels_last_axis(caffe_axis, ndim) if layer.channels_last else caffe_axis


def _to_caffe_order(layer, x):
    """An array received by ``layer`` put back in Caffe axis order."""
    return jnp.moveaxis(x, -1, 1) if layer.channels_last and x.ndim >= 3 else x


def _broadcastable(layer, values, axis, ndim):
    """``values`` (shape = Caffe axes axis..axis+k) reshaped to broadcast over a stored blob."""
    shape = [1] * axis + list(values.shape) + [1] * (ndim - axis - values.ndim)
    values = values.reshape(shape)
    return jnp.moveaxis(values, 1, -1) if layer.channels_last and ndim >= 3 else values


def _like(values, x):
    """A parameter in the activations' type (float32 masters in a bf16 pass)."""
    return values.astype(x.dtype)


# -- normalization and affine ----------------------------------------------

@register("BatchNorm")
class BatchNorm(Layer):
    """Caffe's BatchNorm: (x - mean) / sqrt(var + eps) per channel, no affine part.

    State blobs (Caffe's ``blobs``): mean sum (C,), variance sum (C,), scale factor (1,).
    Batch statistics are used in TRAIN passes (``ctx.train``) and stored statistics
    otherwise, unless ``use_global_stats`` says which.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    channels_last = True
    spatially_local = True      # batch statistics count only the cells inside the image
    float32_compute = True

    def setup(self):
        shape = self.bottom_shapes[0]
        if len(shape) == 0:
            raise self.error("bottom must have at least one axis")
        p = self.lp.batch_norm_param
        self.channels = 1 if len(shape) == 1 else shape[1]
        if self.channels == 0:
            raise self.error(f"bottom shape {tuple(shape)} has no channels (axis 1 is 0)")
        self.fixed_global_stats = p.use_global_stats if p.HasField("use_global_stats") else None
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        self.count_per_channel = count(shape) // self.channels

    def state_shapes(self):
        return [(self.channels,), (self.channels,), (1,)]

    def uses_global_stats(self, train):
        if self.fixed_global_stats is not None:
            return bool(self.fixed_global_stats)
        return not train

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        ndim = x.ndim
        channel_axis = None if ndim == 1 else _storage_axis(self, 1, ndim)
        reduce_axes = tuple(a for a in range(ndim) if a != channel_axis)
        per_channel = [1] * ndim
        if channel_axis is not None:
            per_channel[channel_axis] = self.channels

        if self.uses_global_stats(ctx.train):
            if len(ctx.state) != 3:
                raise self.error("needs its 3 statistics blobs (mean, variance, scale factor)")
            mean_sum, var_sum, factor = (lax.stop_gradient(s) for s in ctx.state)
            inv = jnp.where(factor[0] == 0, 0.0, 1.0 / jnp.where(factor[0] == 0, 1.0, factor[0]))
            mean, var = mean_sum * inv, var_sum * inv
            centered = x - mean.reshape(per_channel).astype(x.dtype)
        else:
            inside = ctx.inside(0, x.shape, 1) if ndim == 4 else None
            if inside is None:
                m = self.count_per_channel
                mean = jnp.mean(x, axis=reduce_axes)
                centered = x - mean.reshape(per_channel)
                var = jnp.mean(centered * centered, axis=reduce_axes)
            else:   # statistics of the true extent only
                h, w = ctx.extent(0)
                m = jnp.asarray(x.shape[0] * h * w, jnp.int32)
                mean = jnp.sum(jnp.where(inside, x, 0), axis=reduce_axes) / m.astype(x.dtype)
                centered = x - mean.reshape(per_channel)
                var = jnp.sum(jnp.where(inside, centered * centered, 0), axis=reduce_axes) \
                    / m.astype(x.dtype)
            if ctx.state:
                self._update_state(ctx, lax.stop_gradient(mean), lax.stop_gradient(var), m)
        std = jnp.sqrt(var + self.eps).astype(x.dtype)
        return [centered / std.reshape(per_channel)]

    def _update_state(self, ctx, mean, var, m):
        maf = self.moving_average_fraction
        if isinstance(m, int):
            correction = m / (m - 1) if m > 1 else 1.0
        else:
            m = m.astype(jnp.float32)
            correction = jnp.where(m > 1, m / jnp.maximum(m - 1, 1), 1.0)
        mean_sum, var_sum, factor = ctx.state
        ctx.set_state([
            mean_sum * maf + mean.astype(mean_sum.dtype),
            var_sum * maf + (var * correction).astype(var_sum.dtype),
            factor * maf + 1,
        ])


class _AxisAffine(Layer):
    """Shared setup of Scale and Bias: a blob over bottom axes [axis, axis + k)."""

    min_bottoms, max_bottoms = 1, 2
    min_tops = max_tops = 1
    channels_last = True

    def _operand_shape(self, axis_param, num_axes_param):
        """The learned (one bottom) or given (bottom[1]) operand's shape; sets self.axis."""
        shape = self.bottom_shapes[0]
        ndim = len(shape)
        if len(self.bottom_shapes) == 2:
            operand = self.bottom_shapes[1]
            self.axis = 0 if len(operand) == 0 else self.canonical_axis(axis_param, ndim)
            if tuple(shape[self.axis:self.axis + len(operand)]) != tuple(operand):
                raise self.error(f"bottom[1] shape {operand} does not match bottom[0] shape "
                                 f"{shape} starting at axis {self.axis}")
            return tuple(operand)
        self.axis = self.canonical_axis(axis_param, ndim)
        if num_axes_param < -1:
            raise self.error(f"num_axes must be >= -1, got {num_axes_param}")
        if num_axes_param >= 0 and self.axis + num_axes_param > ndim:
            raise self.error(f"axis {self.axis} + num_axes {num_axes_param} extends past "
                             f"bottom shape {shape}")
        end = ndim if num_axes_param == -1 else self.axis + num_axes_param
        shape = tuple(shape[self.axis:end])
        if len(shape) == 0:
            self.axis = 0
        return shape

    @property
    def spatially_local(self):
        # the operand must not span H or W (a learned (C, H, W) scale depends on the size)
        return self.axis + len(self.operand_shape) <= 2

    def _operand(self, bottoms, params, param_index):
        """The operand array in Caffe axis order (bottom[1] or a learned blob)."""
        if len(bottoms) == 2:
            return _to_caffe_order(self, bottoms[1])
        return params[param_index]


@register("Scale")
class Scale(_AxisAffine):
    """top = bottom[0] * scale (+ bias), scale learned or given as bottom[1]."""

    def setup(self):
        p = self.lp.scale_param
        self.scale_shape = self.operand_shape = self._operand_shape(p.axis, p.num_axes)
        self.bias_term = bool(p.bias_term)

    def param_shapes(self):
        shapes = [] if len(self.bottom_shapes) == 2 else [self.scale_shape]
        return shapes + ([self.scale_shape] if self.bias_term else [])

    def param_fillers(self):
        p = self.lp.scale_param
        fillers = []
        if len(self.bottom_shapes) == 1:
            fillers.append(p.filler if p.HasField("filler") else _constant_filler(1.0))
        if self.bias_term:
            fillers.append(p.bias_filler if p.HasField("bias_filler") else _constant_filler(0.0))
        return fillers

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        scale = _like(self._operand(bottoms, params, 0), x)
        top = x * _broadcastable(self, scale, self.axis, x.ndim)
        if self.bias_term:
            bias = _like(params[-1], x)
            top = top + _broadcastable(self, bias, self.axis, x.ndim)
        return [top]


@register("Bias")
class Bias(_AxisAffine):
    """top = bottom[0] + bias, bias learned or given as bottom[1]."""

    def setup(self):
        p = self.lp.bias_param
        self.bias_shape = self.operand_shape = self._operand_shape(p.axis, p.num_axes)

    def param_shapes(self):
        return [] if len(self.bottom_shapes) == 2 else [self.bias_shape]

    def param_fillers(self):
        if len(self.bottom_shapes) == 2:
            return []
        p = self.lp.bias_param
        return [p.filler if p.HasField("filler") else _constant_filler(0.0)]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        bias = _like(self._operand(bottoms, params, 0), x)
        return [x + _broadcastable(self, bias, self.axis, x.ndim)]


# -- elementwise arithmetic ------------------------------------------------

@register("Eltwise")
class Eltwise(Layer):
    """PROD, SUM (with one coeff per bottom) or MAX of equally shaped bottoms."""

    min_bottoms, max_bottoms = 2, None
    min_tops = max_tops = 1
    elementwise = True
    spatially_local = True

    def setup(self):
        p = self.lp.eltwise_param
        first = self.bottom_shapes[0]
        for i, shape in enumerate(self.bottom_shapes[1:], start=1):
            if shape != first:
                raise self.error(f"bottom[{i}] shape {shape} differs from bottom[0] shape {first}")
        self.operation = p.operation
        if len(p.coeff) not in (0, len(self.bottom_shapes)):
            raise self.error(f"takes one coeff per bottom: {len(p.coeff)} coeffs for "
                             f"{len(self.bottom_shapes)} bottoms")
        # Caffe rejects coefficients only for PROD; MAX accepts and ignores them
        if p.coeff and self.operation == P.EltwiseParameter.PROD:
            raise self.error("coeff is only allowed with operation SUM")
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(self.bottom_shapes)

    def forward(self, ctx, params, bottoms):
        if self.operation == P.EltwiseParameter.PROD:
            top = bottoms[0] * bottoms[1]
            for b in bottoms[2:]:
                top = top * b
            return [top]
        if self.operation == P.EltwiseParameter.SUM:
            terms = [b if c == 1.0 else b * c for b, c in zip(bottoms, self.coeffs)]
            top = terms[0]
            for t in terms[1:]:
                top = top + t
            return [top]
        return [self._max(bottoms)]

    @staticmethod
    def _max(bottoms):
        # Caffe: bottom 1 wins ties against bottom 0 (a > b ? a : b), later bottoms
        # need to be strictly greater.  The gradient goes to the winner only, which
        # jnp.where's autodiff gives.
        top = jnp.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
        for b in bottoms[2:]:
            top = jnp.where(b > top, b, top)
        return top


# -- blob plumbing ----------------------------------------------------------

def _legacy_axis(layer, param, legacy_field, ndim):
    """``axis`` or the deprecated ``concat_dim``/``slice_dim`` (never both)."""
    if param.HasField(legacy_field):
        if param.HasField("axis"):
            raise layer.error(f"give either axis or {legacy_field}, not both")
        value = int(getattr(param, legacy_field))
        if value >= ndim:
            raise layer.error(f"{legacy_field} {value} is out of range for shape "
                              f"{layer.bottom_shapes[0]}")
        return value
    return layer.canonical_axis(param.axis, ndim)


@register("Concat")
class Concat(Layer):
    min_bottoms, max_bottoms = 1, None
    min_tops = max_tops = 1
    channels_last = True

    def setup(self):
        first = self.bottom_shapes[0]
        self.axis = _legacy_axis(self, self.lp.concat_param, "concat_dim", len(first))
        for i, shape in enumerate(self.bottom_shapes[1:], start=1):
            same_rank = len(shape) == len(first)
            others_match = same_rank and all(
                a == b for k, (a, b) in enumerate(zip(shape, first)) if k != self.axis)
            if not others_match:
                raise self.error(f"bottom[{i}] shape {shape} and bottom[0] shape {first} "
                                 f"must agree on all axes but axis {self.axis}")

    def top_shapes(self):
        shape = list(self.bottom_shapes[0])
        shape[self.axis] = sum(s[self.axis] for s in self.bottom_shapes)
        return [tuple(shape)]

    @property
    def spatially_local(self):
        return self.axis == 1

    def forward(self, ctx, params, bottoms):
        if len(bottoms) == 1:
            return [bottoms[0]]
        ndim = bottoms[0].ndim
        return [jnp.concatenate(bottoms, axis=_storage_axis(self, self.axis, ndim))]


@register("Slice")
class Slice(Layer):
    min_bottoms = max_bottoms = 1
    min_tops, max_tops = 1, None
    channels_last = True

    def setup(self):
        shape = self.bottom_shapes[0]
        p = self.lp.slice_param
        self.axis = _legacy_axis(self, p, "slice_dim", len(shape))
        size = shape[self.axis]
        points = [int(v) for v in p.slice_point]
        if points:
            if len(points) != self.num_tops - 1:
                raise self.error(f"{len(points)} slice_points need {len(points) + 1} tops, "
                                 f"got {self.num_tops}")
            bounds = [0] + points + [size]
            if any(b <= a for a, b in zip(bounds, bounds[1:])):
                raise self.error(f"slice_points {points} must increase strictly within "
                                 f"(0, {size}) for axis {self.axis} of shape {shape}")
        else:
            if size % self.num_tops:
                raise self.error(f"axis {self.axis} of shape {shape} (size {size}) does not "
                                 f"split evenly into {self.num_tops} tops")
            step = size // self.num_tops
            bounds = [step * i for i in range(self.num_tops + 1)]
        self.bounds = bounds

    @property
    def spatially_local(self):
        return self.axis == 1

    def top_shapes(self):
        shapes = []
        for lo, hi in zip(self.bounds, self.bounds[1:]):
            shape = list(self.bottom_shapes[0])
            shape[self.axis] = hi - lo
            shapes.append(tuple(shape))
        return shapes

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        axis = _storage_axis(self, self.axis, x.ndim)
        return [lax.slice_in_dim(x, lo, hi, axis=axis)
                for lo, hi in zip(self.bounds, self.bounds[1:])]


@register("Split")
class Split(Layer):
    """Copies of the bottom; Caffe sums the tops' gradients, as autodiff does."""

    min_bottoms = max_bottoms = 1
    min_tops, max_tops = 1, None
    elementwise = True
    spatially_local = True

    def forward(self, ctx, params, bottoms):
        return [bottoms[0]] * self.num_tops


@register("Silence")
class Silence(Layer):
    """Consumes its bottoms; no tops, no gradient."""

    min_bottoms, max_bottoms = 1, None
    min_tops = max_tops = 0
    elementwise = True
    spatially_local = True

    def top_shapes(self):
        return []

    def forward(self, ctx, params, bottoms):
        return []


@register("Flatten")
class Flatten(Layer):
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        shape = self.bottom_shapes[0]
        p = self.lp.flatten_param
        start = self.canonical_axis(p.axis, len(shape))
        end = self.canonical_axis(p.end_axis, len(shape), "end_axis")
        if end < start:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis} "
                             f"for shape {shape}")
        self.top_shape = shape[:start] + (count(shape[start:end + 1]),) + shape[end + 1:]

    def top_shapes(self):
        return [self.top_shape]

    def forward(self, ctx, params, bottoms):
        return [bottoms[0].reshape(self.top_shape)]


@register("Reshape")
class Reshape(Layer):
    """Caffe's Reshape: dims 0 copy the bottom's, one -1 is inferred, over [axis, axis+num_axes)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        shape = self.bottom_shapes[0]
        ndim = len(shape)
        p = self.lp.reshape_param
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        if not 0 <= start <= ndim:
            raise self.error(f"axis {p.axis} is out of range for bottom shape {shape}")
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= -1, got {p.num_axes}")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if end > ndim:
            raise self.error(f"axis {start} + num_axes {p.num_axes} extends past "
                             f"bottom shape {shape}")
        dims = [int(d) for d in p.shape.dim]
        if dims.count(-1) > 1:
            raise self.error(f"shape {dims} has more than one -1 (inferred) dimension")
        middle = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= ndim:
                    raise self.error(f"shape dim {i} is 0 (copy) but bottom shape {shape} "
                                     f"has no axis {start + i}")
                middle.append(shape[start + i])
            elif d < -1:
                raise self.error(f"shape dim {i} is {d}; dims must be > 0, 0 (copy) or -1 (infer)")
            else:
                middle.append(d)
        top = list(shape[:start]) + middle + list(shape[end:])
        total = count(shape)
        if -1 in top:
            known = count(d for d in top if d != -1)
            if known == 0 or total % known:
                raise self.error(f"cannot infer the -1 dimension of {dims}: bottom shape "
                                 f"{shape} has {total} elements")
            top[top.index(-1)] = total // known
        if count(top) != total:
            raise self.error(f"top shape {tuple(top)} has {count(top)} elements but bottom "
                             f"shape {shape} has {total}")
        self.top_shape = tuple(top)

    def top_shapes(self):
        return [self.top_shape]

    def forward(self, ctx, params, bottoms):
        return [bottoms[0].reshape(self.top_shape)]


@register("Tile")
class Tile(Layer):
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        shape = self.bottom_shapes[0]
        p = self.lp.tile_param
        self.axis = self.canonical_axis(p.axis, len(shape))
        if not p.HasField("tiles") or p.tiles < 1:
            raise self.error("tile_param.tiles must be given and positive")
        self.tiles = int(p.tiles)

    @property
    def spatially_local(self):
        return self.axis == 1

    def top_shapes(self):
        shape = list(self.bottom_shapes[0])
        shape[self.axis] *= self.tiles
        return [tuple(shape)]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        reps = [1] * x.ndim
        reps[self.axis] = self.tiles
        return [jnp.tile(x, reps)]


@register("Reduction")
class Reduction(Layer):
    """SUM, ASUM, SUMSQ or MEAN over all axes from ``axis`` on, times ``coeff``."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        shape = self.bottom_shapes[0]
        p = self.lp.reduction_param
        self.axis = self.canonical_axis(p.axis, len(shape))
        self.operation = p.operation
        coeff = float(p.coeff)
        if self.operation == P.ReductionParameter.MEAN:
            coeff /= count(shape[self.axis:])
        self.coeff = coeff

    def top_shapes(self):
        return [self.bottom_shapes[0][:self.axis]]

    def forward(self, ctx, params, bottoms):
        x = bottoms[0]
        op = self.operation
        if op == P.ReductionParameter.ASUM:
            x = x * lax.stop_gradient(jnp.sign(x))  # |x| with Caffe's sign(0) = 0 gradient
        elif op == P.ReductionParameter.SUMSQ:
            x = x * x
        total = jnp.sum(x, axis=tuple(range(self.axis, x.ndim)))
        return [total * self.coeff if self.coeff != 1.0 else total]


@register("ArgMax")
class ArgMax(Layer):
    """Indices (or values) of the top_k largest entries; ties rank the larger index first.

    That tie order is Caffe's: it sorts (value, index) pairs with std::greater.
    Without ``axis`` each item's entries are ranked together and the top is
    (N, 1, top_k) (indices) or (N, 2, top_k) (indices then values), padded with
    axes of size 1 to the bottom's number of axes.  No gradient.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self):
        shape = self.bottom_shapes[0]
        p = self.lp.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.axis = self.canonical_axis(p.axis, len(shape)) if p.HasField("axis") else None
        if self.axis is not None:
            span = shape[self.axis]
        else:
            if len(shape) < 1:
                raise self.error("bottom must have at least one axis")
            span = count(shape[1:])
        if not 1 <= self.top_k <= span:
            raise self.error(f"top_k {self.top_k} must be between 1 and {span} "
                             f"for bottom shape {shape}")

    def top_shapes(self):
        shape = self.bottom_shapes[0]
        if self.axis is not None:
            top = list(shape)
            top[self.axis] = self.top_k
            return [tuple(top)]
        top = [1] * max(3, len(shape))
        top[0] = shape[0]
        top[1] = 2 if self.out_max_val else 1
        top[2] = self.top_k
        return [tuple(top)]

    @property
    def spatially_local(self):
        return self.axis == 1

    def _ranked(self, x):
        """Top-k values and indices along the last axis, larger index first on ties."""
        n = x.shape[-1]
        values, flipped_index = lax.top_k(jnp.flip(x, axis=-1), self.top_k)
        return values, (n - 1 - flipped_index).astype(x.dtype)

    def forward(self, ctx, params, bottoms):
        x = lax.stop_gradient(bottoms[0])
        if self.axis is not None:
            values, indices = self._ranked(jnp.moveaxis(x, self.axis, -1))
            top = values if self.out_max_val else indices
            return [jnp.moveaxis(top, -1, self.axis)]
        values, indices = self._ranked(x.reshape(x.shape[0], -1))
        parts = [indices, values] if self.out_max_val else [indices]
        top = jnp.stack(parts, axis=1)
        return [top.reshape(self.top_shapes()[0])]
