"""Host-side blobs: NumPy ``data``/``diff`` pairs with pycaffe's interface.

These are what ``net.blobs[name]``, ``net.params[layer][i]`` and the ``top``/``bottom``
lists of a Python layer hold.  Assigning into ``.data`` (``blob.data[...] = x``) is
seen by the next forward pass, as in pycaffe.
"""
import numpy as np


class Blob:
    """An N-d float32 array and its gradient, in Caffe's (N, C, H, W) axis order."""

    def __init__(self, shape=(), data=None):
        if data is not None:
            self._data = np.ascontiguousarray(data, dtype=np.float32)
        else:
            self._data = np.zeros(tuple(int(d) for d in shape), np.float32)
        self._diff = None

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        value = np.asarray(value, dtype=np.float32)
        if value.shape != self._data.shape:
            value = np.broadcast_to(value, self._data.shape)
        self._data[...] = value

    @property
    def diff(self):
        if self._diff is None or self._diff.shape != self._data.shape:
            self._diff = np.zeros_like(self._data)
        return self._diff

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    @property
    def shape(self):
        return self._data.shape

    def reshape(self, *shape):
        """Resize to ``shape`` (pycaffe's ``blob.reshape(n, c, h, w)``); contents are reset when the size changes."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if shape != self._data.shape:
            self._data = np.zeros(shape, np.float32)
            self._diff = None

    @property
    def count(self):
        return int(self._data.size)

    def _axis(self, i):
        return self._data.shape[i] if self._data.ndim > i else 1

    num = property(lambda self: self._axis(0))
    channels = property(lambda self: self._axis(1))
    height = property(lambda self: self._axis(2))
    width = property(lambda self: self._axis(3))

    def __repr__(self):
        return f"Blob(shape={self.shape})"
