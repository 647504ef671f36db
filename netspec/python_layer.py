"""The base class of user-written Python layers (``caffe.Layer`` in pycaffe).

A prototxt layer ``type: "Python"`` names a module and a class in its
``python_param``; the class subclasses :class:`Layer` and implements ``setup``,
``reshape``, ``forward`` and (optionally) ``backward`` on host-side
:class:`netspec.blob.Blob` lists, exactly as with pycaffe.  ``self.param_str``
holds ``python_param.param_str`` and ``self.phase`` the net's phase
(``netspec.TRAIN`` = 0 or ``netspec.TEST`` = 1).
"""


class Layer:
    """Subclass this (as ``caffe.Layer``) to write a layer in Python."""

    def __init__(self, layer_param=None, phase=0):
        self.layer_param = layer_param
        self.param_str = layer_param.python_param.param_str if layer_param is not None else ""
        self.phase = phase
        self.blobs = []

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, top, propagate_down, bottom):
        pass
