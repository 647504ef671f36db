"""The base class of user-written Python layers (``caffe.Layer`` in pycaffe).

A prototxt layer ``type: "Python"`` names a module and a class in its
``python_param``; the class subclasses :class:`Layer` and implements ``setup``,
``reshape``, ``forward`` and (optionally) ``backward`` on host-side
:class:`netspec.blob.Blob` lists, exactly as with pycaffe.  ``self.param_str``
holds ``python_param.param_str`` and ``self.phase`` the net's phase
(``netspec.TRAIN`` = 0 or ``netspec.TEST`` = 1).

Multi-process training (``netspec train --distributed``): ``self.process_index`` and
``self.process_count`` say which slice of the global batch this process trains on
(0 and 1 in a single process, and always in TEST nets, which every process runs
whole).  A data layer may keep producing the whole batch (netspec then keeps rows
``[index*N/P, (index+1)*N/P)``), or set ``self.produces_process_slice = True`` and
produce only those rows (reading only its share of a sequential source).
"""


class Layer:
    """Subclass this (as ``caffe.Layer``) to write a layer in Python."""

    def __init__(self, layer_param=None, phase=0):
        self.layer_param = layer_param
        self.param_str = layer_param.python_param.param_str if layer_param is not None else ""
        self.phase = phase
        self.blobs = []

    produces_process_slice = False

    @property
    def process_index(self):
        from .distributed import data_slice
        return data_slice(getattr(self, "phase", 0))[0]

    @property
    def process_count(self):
        from .distributed import data_slice
        return data_slice(getattr(self, "phase", 0))[1]

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, top, propagate_down, bottom):
        pass
