"""True extents of padded spatial blobs: masks and Caffe's size formulas on runtime integers.

In padded execution (``netspec.buckets``) a 4-axis blob (N, C, H, W) is stored at a
bucket shape whose first ``h`` rows and ``w`` columns are the blob Caffe would
compute for the image; ``(h, w)`` is the blob's *extent*, two int32 scalars known
only at run time.  The cells outside it hold whatever the padded computation left
there; a layer that reads across positions first overwrites them (``fill``) with the
value that makes its result on the inside equal Caffe's (``Layer.spatial_fill``).

The size formulas here are Caffe's (the same as the layers' ``top_shapes``), written
with ``jnp`` integer ops so that they work on traced values and on Python ints alike.
"""
import jax.numpy as jnp
from jax import lax


def inside(extent, shape, h_axis):
    """Boolean mask broadcastable to ``shape``: True on rows < h (axis ``h_axis``) and
    columns < w (axis ``h_axis + 1``)."""
    h, w = extent
    rows = lax.broadcasted_iota(jnp.int32, (shape[h_axis], 1), 0) < h
    cols = lax.broadcasted_iota(jnp.int32, (1, shape[h_axis + 1]), 1) < w
    mask = rows & cols
    lead = (1,) * h_axis
    trail = (1,) * (len(shape) - h_axis - 2)
    return mask.reshape(lead + mask.shape + trail)


def fill_outside(x, extent, h_axis, value):
    """``x`` with every cell outside ``extent`` set to ``value`` (a select: no gradient
    flows to the replaced cells, whatever they held)."""
    return jnp.where(inside(extent, x.shape, h_axis), x, jnp.asarray(value, x.dtype))


def _int(v):
    return jnp.asarray(v, jnp.int32)


def conv_size(size, kernel_extent, stride, pad):
    """Convolution: floor((in + 2 pad - extent) / stride) + 1."""
    return (_int(size) + 2 * pad - kernel_extent) // stride + 1


def deconv_size(size, kernel_extent, stride, pad):
    """Deconvolution: stride (in - 1) + extent - 2 pad."""
    return stride * (_int(size) - 1) + kernel_extent - 2 * pad


def pooled_size(size, kernel, stride, pad, ceil_mode, any_pad):
    """Pooling: ceil (or floor) ((in + 2 pad - k) / stride) + 1, minus one when the last
    window would start in the padding (Caffe applies that rule when any axis is padded)."""
    span = _int(size) + 2 * pad - kernel
    out = (-((-span) // stride) if ceil_mode else span // stride) + 1
    if any_pad:
        out = jnp.where((out - 1) * stride >= _int(size) + pad, out - 1, out)
    return out


def ave_pool_divisor(extent, out_hw, kernel, stride, pad):
    """Caffe's AVE ``pool_size`` per output cell, (OH, OW) float32, for an input whose
    true extent is ``extent``: the window clipped to [-pad, in + pad)."""
    sizes = []
    for size, out, k, s, p in zip(extent, out_hw, kernel, stride, pad):
        start = lax.iota(jnp.int32, out) * s - p
        end = jnp.minimum(start + k, _int(size) + p)
        sizes.append((end - start).astype(jnp.float32))
    return sizes[0][:, None] * sizes[1][None, :]
