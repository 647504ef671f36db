"""Host-side blobs: ``data``/``diff`` pairs with pycaffe's interface.

These are what ``net.blobs[name]``, ``net.params[layer][i]`` and the ``top``/``bottom``
lists of a Python layer hold.  Assigning into ``.data`` (``blob.data[...] = x``) is
seen by the next forward pass, as in pycaffe.

After a pass (or a solver step) a blob's values usually live on the device: they are
copied to host memory only when ``.data`` or ``.diff`` is read (``on_host`` tells),
so a pass whose blobs nobody reads moves nothing to the host.  A host array, once
handed out, is the user's: later values are written into it in place (as pycaffe's
views of Caffe's memory behave) and the net reads it back before every pass, so
assignments into it keep working.
"""
import numpy as np


def _fetch(array, shape):
    """A writable host copy of a device array, cut to ``shape`` (padded passes)."""
    host = np.asarray(array)
    if host.shape != shape:
        host = host[tuple(slice(0, d) for d in shape)]
    return np.array(host, np.float32)


class Blob:
    """An N-d float32 array and its gradient, in Caffe's (N, C, H, W) axis order."""

    def __init__(self, shape=(), data=None):
        if data is not None:
            host = np.asarray(data, dtype=np.float32)     # (ascontiguousarray would make 0-d blobs 1-d)
            self._host = host if host.flags.c_contiguous else np.array(host, order="C")
        else:
            self._host = np.zeros(tuple(int(d) for d in shape), np.float32)
        self._shape = self._host.shape
        self._device = None         # a device array holding the values (maybe padded larger)
        self._handed_out = False    # ``.data`` was read: the host array is authoritative
        self._diff = None           # host diff
        self._diff_device = None    # device diff (authoritative when set)
        self._diff_handed_out = False

    # -- data -----------------------------------------------------------------
    @property
    def data(self):
        if self._host is None:
            self._host = _fetch(self._device, self._shape)
        self._handed_out = True
        return self._host

    @data.setter
    def data(self, value):
        value = np.asarray(value, dtype=np.float32)
        if value.shape != self._shape:
            value = np.broadcast_to(value, self._shape)
        self.data[...] = value

    @property
    def on_host(self):
        """Whether the values are in host memory (False: still only on the device)."""
        return self._host is not None

    def set_device(self, array, shape=None):
        """New values from a device array (cut to ``shape`` when it is padded larger).
        A handed-out host array of the same shape is updated in place."""
        shape = tuple(array.shape) if shape is None else tuple(int(d) for d in shape)
        if self._handed_out and self._host is not None and self._host.shape == shape:
            self._host[...] = np.asarray(array)[tuple(slice(0, d) for d in shape)]
        else:
            self._host, self._handed_out = None, False
        self._shape, self._device = shape, array
        if self._diff is not None and self._diff.shape != shape:
            self._diff, self._diff_handed_out = None, False

    def set_host(self, array):
        """New values from a host array (netspec's own writes: weights being loaded).  The
        array itself becomes the blob's (no copy), unless the user holds the old one."""
        array = np.asarray(array, np.float32)
        if self._handed_out and self._host is not None and self._host.shape == array.shape:
            self._host[...] = array
        else:
            self._host = array if array.flags.c_contiguous and array.flags.writeable else np.array(array)
            self._shape, self._handed_out = array.shape, False
        self._device = None

    def value(self):
        """The values for the next pass: the host array when it may have changed, else the
        device array (no copy either way)."""
        if self._host is not None and (self._handed_out or self._device is None):
            self._device = None
            return self._host
        return self._device

    def keep_device_copy(self, array):
        """Remember ``array``, an upload of the host values, for later passes (unless the
        host array is the user's, who may change it any time)."""
        if not self._handed_out:
            self._device = array

    def numpy(self):
        """The values as a host array for netspec's own reading (saving a model): no copy
        when they are in host memory or on the CPU, and the blob stays as it is."""
        if self._host is not None:
            return self._host
        host = np.asarray(self._device)
        return host if host.shape == self._shape else host[tuple(slice(0, d) for d in self._shape)]

    # -- diff -----------------------------------------------------------------
    @property
    def diff(self):
        if self._diff_device is not None:
            self._diff = _fetch(self._diff_device, self._shape)
            self._diff_device = None
        elif self._diff is None or self._diff.shape != self._shape:
            self._diff = np.zeros(self._shape, np.float32)
        self._diff_handed_out = True
        return self._diff

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    @property
    def diff_on_host(self):
        """Whether the diff is in host memory (False: on the device, or zero and never read)."""
        return self._diff is not None

    def set_diff_device(self, array):
        """A new diff from a device array, maybe padded larger than the blob (overwrites, as
        blob diffs are in Caffe)."""
        if self._diff_handed_out and self._diff is not None and self._diff.shape == self._shape:
            self._diff[...] = np.asarray(array)[tuple(slice(0, d) for d in self._shape)]
            return
        self._diff, self._diff_handed_out, self._diff_device = None, False, array

    def accumulate_diff(self, array):
        """Add a device array to the diff (param diffs accumulate across backward passes)."""
        if self._diff_device is not None:
            self._diff_device = self._diff_device + array
        elif self._diff is not None and self._diff_handed_out:
            self._diff[...] += np.asarray(array)
        else:
            self._diff, self._diff_handed_out, self._diff_device = None, False, array

    def clear_diff(self):
        if self._diff_handed_out and self._diff is not None:
            self._diff[...] = 0
        else:
            self._diff, self._diff_device = None, None

    # -- shape ----------------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    def reshape(self, *shape):
        """Resize to ``shape`` (pycaffe's ``blob.reshape(n, c, h, w)``); contents are reset when the size changes."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if shape != self._shape:
            self._host = np.zeros(shape, np.float32)
            self._shape, self._device, self._handed_out = shape, None, False
            self._diff, self._diff_device, self._diff_handed_out = None, None, False

    @property
    def count(self):
        return int(np.prod(self._shape, dtype=np.int64))

    def _axis(self, i):
        return self._shape[i] if len(self._shape) > i else 1

    num = property(lambda self: self._axis(0))
    channels = property(lambda self: self._axis(1))
    height = property(lambda self: self._axis(2))
    width = property(lambda self: self._axis(3))

    def __repr__(self):
        return f"Blob(shape={self.shape})"
