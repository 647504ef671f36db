"""Relate the coordinates of two blobs of a net spec, to compute Crop offsets.

Every spatial layer is described by an affine map of coordinates,
``(axis, a, b)``: a position ``x`` of the layer's output lies over position
``a * x + b`` of its input.  ``axis`` is the last non-spatial axis (1 for
N, C, H, W), or None for layers that keep coordinates as they are.

- Convolution / Pooling / Im2col, stride s, effective kernel
  k = (kernel - 1) * dilation + 1, padding p:  a = s, b = (k - 1) / 2 - p
  (the centre of the window, in unpadded input coordinates).
- Deconvolution: the inverse of that, a = 1 / s, b = (p - (k - 1) / 2) / s.
- Crop with offset o (along the axes after ``axis - 1``): a = 1, b = o.
- Elementwise layers (ReLU, Dropout, Eltwise, Scale, ...): identity.

Maps compose along a path through the graph. ``coord_map_from_to(f, t)``
gives the map taking a coordinate of ``t`` to one of ``f``; ``crop(f, t)``
then makes the Crop layer that cuts ``f`` down to ``t``'s grid.

(pycaffe's ``caffe.coord_map`` expresses the same maps in the other
direction, input to output; the resulting offsets are the same.)
"""
from fractions import Fraction

from netspec.errors import NetspecError
from netspec.net_spec import Top, layers as L

ELEMENTWISE_TYPES = frozenset([
    'AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Clip', 'Dropout', 'Eltwise', 'ELU', 'Exp',
    'Log', 'LRN', 'MVN', 'Power', 'PReLU', 'ReLU', 'Scale', 'Sigmoid', 'Split', 'Swish',
    'TanH', 'Threshold'])
WINDOW_TYPES = frozenset(['Convolution', 'Pooling', 'Im2col'])
IDENTITY = (None, (Fraction(1),), (Fraction(0),))


class UndefinedMapError(Exception):
    """A layer whose output coordinates have no fixed relation to its input's."""


def _per_axis(values, default, count):
    """Caffe's one-value-or-one-per-axis settings, as a tuple of ``count`` values."""
    values = list(values) or [default]
    return tuple(values) * count if len(values) == 1 else tuple(values)


def window_geometry(fn):
    """(axis, stride, effective kernel, pad) of a Convolution, Deconvolution, Pooling or Im2col."""
    layer = fn.settings
    if fn.type_name == 'Pooling':
        p = layer.pooling_param
        if p.global_pooling:
            raise UndefinedMapError(f'{fn.type_name} with global_pooling')
        if p.HasField('kernel_h') or p.HasField('stride_h') or p.HasField('pad_h'):
            raise NetspecError('crop: Pooling with kernel_h/stride_h/pad_h is not supported; '
                               'use kernel_size/stride/pad')
        if not p.HasField('kernel_size'):
            raise UndefinedMapError('Pooling without kernel_size')
        return 1, (p.stride,), (p.kernel_size,), (p.pad,)
    p = layer.convolution_param
    if p.HasField('kernel_h') or p.HasField('stride_h') or p.HasField('pad_h'):
        raise NetspecError(f'crop: {fn.type_name} with kernel_h/stride_h/pad_h is not '
                           'supported; use kernel_size/stride/pad')
    if not p.kernel_size:
        raise UndefinedMapError(f'{fn.type_name} without kernel_size')
    count = max(len(p.kernel_size), len(p.stride), len(p.pad), len(p.dilation))
    kernel = _per_axis(p.kernel_size, 1, count)
    dilation = _per_axis(p.dilation, 1, count)
    effective = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    return p.axis, _per_axis(p.stride, 1, count), effective, _per_axis(p.pad, 0, count)


def layer_map(fn):
    """``(axis, a, b)`` of one layer: output position x lies over input position a*x + b."""
    if fn.type_name in WINDOW_TYPES or fn.type_name == 'Deconvolution':
        axis, stride, kernel, pad = window_geometry(fn)
        a = tuple(Fraction(s) for s in stride)
        b = tuple(Fraction(k - 1, 2) - p for k, p in zip(kernel, pad))
        if fn.type_name == 'Deconvolution':
            return invert((axis, a, b))
        return axis, a, b
    if fn.type_name in ELEMENTWISE_TYPES:
        return IDENTITY
    if fn.type_name == 'Crop':
        p = fn.settings.crop_param
        offsets = tuple(Fraction(o) for o in p.offset) or (Fraction(0),)
        return p.axis - 1, (Fraction(1),) * len(offsets), offsets
    raise UndefinedMapError(fn.type_name)


def _broadcast(x, y):
    if len(x) == len(y):
        return x, y
    if len(x) == 1:
        return x * len(y), y
    if len(y) == 1:
        return x, y * len(x)
    raise NetspecError(f'crop: maps over {len(x)} and {len(y)} axes do not fit together')


def compose(outer, inner):
    """The map of ``outer`` followed by ``inner`` (outer's input is inner's output)."""
    axis_outer, a1, b1 = outer
    axis_inner, a2, b2 = inner
    if axis_outer is not None and axis_inner is not None and axis_outer != axis_inner:
        raise NetspecError(f'crop: layers map different axes ({axis_outer + 1} and '
                           f'{axis_inner + 1}); cannot relate their coordinates')
    axis = axis_outer if axis_outer is not None else axis_inner
    a1, a2 = _broadcast(a1, a2)
    b1, b2 = _broadcast(b1, b2)
    return (axis, tuple(x * y for x, y in zip(a1, a2)),
            tuple(x * y + z for x, y, z in zip(a2, b1, b2)))


def invert(coord_map):
    """The map going the other way: x = a*y + b  <=>  y = x/a - b/a."""
    axis, a, b = coord_map
    return axis, tuple(1 / x for x in a), tuple(-y / x for x, y in zip(a, b))


def _mapped_bottoms(top):
    """Bottoms whose coordinates a layer's output follows (Crop: only the cropped one)."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == 'Crop' else bottoms


def _ancestor_maps(start):
    """{ancestor top: map from ``start`` coordinates to the ancestor's}, breadth first."""
    maps = {start: IDENTITY}
    order = [start]
    for top in order:
        try:
            step = layer_map(top.fn)
        except UndefinedMapError:
            continue
        for bottom in _mapped_bottoms(top):
            if bottom not in maps:
                maps[bottom] = compose(maps[top], step)
                order.append(bottom)
    return maps, order


def coord_map_from_to(top_from, top_to):
    """``(axis, a, b)``: position x of ``top_to`` lies over position a*x + b of ``top_from``."""
    for top in (top_from, top_to):
        if not isinstance(top, Top):
            raise NetspecError(f'crop: {top!r} is not a top of a net spec')
    from_maps, _ = _ancestor_maps(top_from)
    to_maps, order = _ancestor_maps(top_to)
    for common in order:
        if common in from_maps:
            return compose(to_maps[common], invert(from_maps[common]))
    raise NetspecError(f'crop: no common input found for {top_from.fn.type_name} and '
                       f'{top_to.fn.type_name} tops through spatial layers; '
                       'cannot compute the offset')


def crop_params(top_from, top_like):
    """``(axis, [offsets])`` of the Crop layer that cuts ``top_from`` to ``top_like``'s grid."""
    axis, a, b = coord_map_from_to(top_from, top_like)
    if any(x != 1 for x in a):
        raise NetspecError(f'crop: the two tops have different scales ({_show(a)}); '
                           'add or fix an upsampling layer')
    if any(y < 0 for y in b):
        raise NetspecError(f'crop: the second top starts before the first ({_show(b)}); '
                           'pad the input more')
    if any(y.denominator != 1 for y in b):
        raise NetspecError(f'crop: the offset is not a whole number ({_show(b)})')
    return axis + 1, [int(y) for y in b]


def _show(values):
    return ', '.join(str(v) for v in values)


def crop(top_from, top_like):
    """A Crop layer cutting ``top_from`` to the size and alignment of ``top_like``."""
    axis, offsets = crop_params(top_from, top_like)
    return L.Crop(top_from, top_like, crop_param=dict(axis=axis, offset=offsets))
