"""``HDF5Output``: writes its first two bottoms to ``hdf5_output_param.file_name``.

As Caffe's ``HDF5OutputLayer``: datasets ``data`` and ``label``, each shaped 4-D
(num, channels, height, width by Caffe's legacy accessors), float32; the file is
truncated when the layer first writes in this process.  Caffe fails on a second
forward (the datasets exist); here each forward replaces them, so the file holds the
last batch.  The write runs on the host through an ordered ``io_callback`` inside the
jitted pass, so XLA never removes it; it has no tops and passes no gradient.
"""
import os
import threading

import jax
import numpy as np
from jax.experimental import io_callback

from ..layers.base import Layer, register

_lock = threading.Lock()
_created = set()        # files this process has already truncated


def _legacy_4d(shape):
    """Caffe's (num, channels, height, width) of a blob shape (1 for missing axes)."""
    shape = tuple(shape)
    return tuple(shape[i] if i < len(shape) else 1 for i in range(4)) if len(shape) <= 4 else \
        (shape[0], shape[1], shape[2], int(np.prod(shape[3:])))


def write_hdf5(path, data, label):
    import h5py
    with _lock:
        mode = "a" if path in _created else "w"
        with h5py.File(path, mode) as f:
            for name, array in (("data", data), ("label", label)):
                if name in f:
                    del f[name]
                f.create_dataset(name, data=np.asarray(array, np.float32))
        _created.add(path)


@register("HDF5Output")
class HDF5Output(Layer):
    min_bottoms = 2
    max_tops = 0

    def setup(self):
        self.file_name = self.lp.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is empty; name the .h5 file to write")
        parent = os.path.dirname(os.path.abspath(self.file_name))
        if not os.path.isdir(parent):
            raise self.error(f"cannot write {self.file_name}: directory {parent} does not exist")
        a, b = self.bottom_shapes[0], self.bottom_shapes[1]
        if not a or not b or a[0] != b[0]:
            raise self.error(f"data bottom {a} and label bottom {b} must have the same batch size")
        self.shapes = (_legacy_4d(a), _legacy_4d(b))

    def top_shapes(self):
        return []

    def forward(self, ctx, params, bottoms):
        path = os.path.abspath(self.file_name)
        data_shape, label_shape = self.shapes

        def write(data, label):
            write_hdf5(path, np.asarray(data).reshape(data_shape), np.asarray(label).reshape(label_shape))

        data, label = (jax.lax.stop_gradient(x.astype(np.float32)) for x in bottoms[:2])
        io_callback(write, None, data, label, ordered=True)
        return []
