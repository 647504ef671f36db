"""Layer implementations, one small class per Caffe type, found by type string.

Importing this package fills the registry from the modules below.
"""
from .base import (TRAIN, TEST, Layer, LayerContext, channels_last_axis,  # noqa: F401
                   layer_class, register, registered_types)
from . import (data, vision, neuron, common, loss, recurrent, normalization,  # noqa: F401,E402  (registration)
               pooling_pyramid, selection, parameter, im2col, pairwise, ssd, rcnn,
               fork_resize, fork_norm, fork_channels)
from ..caffe_data import hdf5_output  # noqa: F401,E402  (HDF5Output, registered beside Caffe's data formats)
