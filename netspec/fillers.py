"""Caffe's weight fillers (``FillerParameter``), producing NumPy float32 arrays.

Fan-in and fan-out follow Caffe: ``fan_in = count / shape[0]``,
``fan_out = count / shape[1]`` (for a Deconvolution blob (C_in, C_out/g, k, k)
that is Caffe's own, slightly surprising, convention and we keep it).
"""
import numpy as np

from .errors import NetspecError


def _fans(shape):
    count = int(np.prod(shape)) if shape else 1
    fan_in = count // shape[0] if len(shape) > 0 and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_norm_n(filler, shape):
    fan_in, fan_out = _fans(shape)
    norm = filler.variance_norm
    if norm == 1:   # FAN_OUT
        return fan_out
    if norm == 2:   # AVERAGE
        return (fan_in + fan_out) / 2.0
    return fan_in


def _sparsify(values, filler, shape, rs):
    if filler.sparse >= 0 and len(shape) >= 1:
        keep_probability = filler.sparse / float(shape[0])
        values *= rs.binomial(1, min(1.0, keep_probability), size=shape)
    return values


def fill(filler, shape, rs):
    """An array of ``shape`` filled as Caffe's ``filler`` would, drawing from ``rs`` (RandomState)."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type if filler is not None else "constant"
    if filler is None or kind == "constant":
        value = filler.value if filler is not None else 0.0
        if value == 0:      # calloc'd: no memory is touched until written (weights loaded later)
            return np.zeros(shape, np.float32)
        return np.full(shape, value, np.float32)
    if kind == "uniform":
        return rs.uniform(filler.min, filler.max, size=shape).astype(np.float32)
    if kind == "gaussian":
        values = rs.normal(filler.mean, filler.std, size=shape)
        return _sparsify(values, filler, shape, rs).astype(np.float32)
    if kind == "positive_unitball":
        values = rs.uniform(0.0, 1.0, size=shape)
        rows = values.reshape(shape[0], -1)
        rows /= rows.sum(axis=1, keepdims=True)
        return rows.reshape(shape).astype(np.float32)
    if kind == "xavier":
        scale = np.sqrt(3.0 / _variance_norm_n(filler, shape))
        return rs.uniform(-scale, scale, size=shape).astype(np.float32)
    if kind == "msra":
        std = np.sqrt(2.0 / _variance_norm_n(filler, shape))
        return rs.normal(0.0, std, size=shape).astype(np.float32)
    if kind == "bilinear":
        return bilinear(shape)
    raise NetspecError(f'unknown filler type "{kind}" (one of constant, uniform, gaussian, '
                       'positive_unitball, xavier, msra, bilinear)')


def bilinear(shape):
    """Caffe's BilinearFiller: the same bilinear upsampling kernel in every (n, c) slice.

    f = ceil(K / 2), c = (K - 1) / (2 f), w[y, x] = (1 - |x/f - c|) (1 - |y/f - c|),
    in float arithmetic as Caffe's filler.hpp computes it.
    """
    if len(shape) != 4 or shape[2] != shape[3]:
        raise NetspecError(f"bilinear filler needs a 4-D blob with square kernels, got {shape}")
    k = shape[3]
    f = int(np.ceil(k / 2.0))
    c = np.float32((k - 1) / (2.0 * f))
    x = np.arange(k, dtype=np.float32)
    line = np.float32(1) - np.abs(x / np.float32(f) - c)
    kernel = np.outer(line, line).astype(np.float32)
    return np.broadcast_to(kernel, shape).copy()
