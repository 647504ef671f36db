"""Caffe's own data layers and database formats.

``host_data_layer(layer_param, phase, search_path)`` gives the host-side object that
produces a data layer's tops (pycaffe's Python-layer interface: ``setup``,
``reshape``, ``forward`` on ``Blob`` lists), or ``None`` for layers computed inside
the net.  ``Python`` layers without bottoms are loaded from their module; Caffe's
data layer types (``Data``, ``ImageData``, ``HDF5Data``, ``MemoryData``,
``WindowData``) come from ``netspec.caffe_data.layers``.
"""


def host_data_layer(lp, phase, search_path=()):
    if lp.type == "Python" and not lp.bottom:
        from ..layers.data import load_python_layer
        return load_python_layer(lp, phase, search_path)
    from .layers import HOST_DATA_LAYERS
    cls = HOST_DATA_LAYERS.get(lp.type)
    return None if cls is None else cls(lp, phase)
