"""Pairwise region net on VGG16 (J. Long's thesis, ch. 4, Table 4.1), for COCO instances.

Five region pathways split off VGG16 just before its pooling layers (and off fc6), each
predicting a K x K-cell region at every centre of its grid, every ``stride`` pixels,
upsampled by ``stride`` inside the loss (stride = upsampling factor, as in the thesis):

    pathway  feature  stride  kernel  window        K = window / upsampling
    p1       conv2_2   2 px    5x5     28 x 28 px    14
    p2       conv3_3   4 px    5x5     56 x 56 px    14
    p3       conv4_3   8 px    9x9    144 x 144 px   18
    p4       conv5_3  16 px    9x9    288 x 288 px   18
    p5       fc6      32 px    9x9    576 x 576 px   18

Each pathway: a kernel x kernel Convolution to K^2 pairwise values, PairTranspose, the
shared K^2 x K^2 matrix (a 1x1 Convolution) -> ``regions_p{i}``; PairRegionLoss against
the instance map at image resolution (``min_scale: 0``: the thesis assigns an instance
to every centre inside it whose window holds it whole, and "do[es] not take any special
steps to prevent larger pathways from learning about smaller objects"); and a scoring
pathway ``objectness_p{i}`` (1x1 Convolution of the pair values) under a
SigmoidCrossEntropyLoss on the loss layer's objectness target.

The trunk keeps VGG16's names and shapes (conv1_1 .. conv5_3, fc6 as a 7x7
convolution) but pads conv1_1 by 1, not FCN's 100, and fc6 by 3, so every grid sits on
the image (``region_layers``).  No fc7: nothing reads it.  Initialise from VGG16 with
``netspec surgery vgg16-to-fcn`` (the pathway layers keep their fillers; see the README).

Run ``python net.py`` (from any directory) to rewrite train.prototxt, val.prototxt and
deploy.prototxt next to this file.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
try:
    import netspec.net_spec  # noqa: F401
except ImportError:  # running from a source checkout: its root is two levels up
    sys.path.insert(0, os.path.dirname(MODELS))
if MODELS not in sys.path:  # for fcn_layers / region_layers, the helpers the models share
    sys.path.insert(0, MODELS)
from fcn_layers import VGG16_DEPTHS, VGG16_WIDTHS, conv_relu, max_pool, write_splits  # noqa: E402
from region_layers import FCN_MEAN, coco_data, pathway, trunk  # noqa: E402
from netspec.net_spec import NetSpec, layers as L  # noqa: E402

# (name, feature blob, stride = upsampling, kernel, K) -- Table 4.1, window = K * stride
PATHWAYS = (
    ('p1', 'relu2_2', 2, 5, 14),
    ('p2', 'relu3_3', 4, 5, 14),
    ('p3', 'relu4_3', 8, 9, 18),
    ('p4', 'relu5_3', 16, 9, 18),
    ('p5', 'relu6', 32, 9, 18),
)
# the pathways start near zero but not at zero (two zero layers in a row get no gradient)
PAIR_FILLERS = dict(weight_filler=dict(type='gaussian', std=0.001), bias_filler=dict(type='constant'))
MATRIX_FILLERS = dict(weight_filler=dict(type='xavier'), bias_filler=dict(type='constant'))
OBJECTNESS_FILLERS = dict(weight_filler=dict(type='constant'), bias_filler=dict(type='constant'))


def regions_net(split, pathways=PATHWAYS):
    """The train2017 / val2017 net, or with split 'deploy' the inference net (Input, no loss);
    ``pathways``: a subset of PATHWAYS (e.g. the coarsest alone, for timing)."""
    n = NetSpec()
    if split == 'deploy':
        # COCO's mode image size; the net is reshaped to each image
        n.data = L.Input(shape=dict(dim=[1, 3, 480, 640]))
    else:
        coco_data(n, split, '../../data/coco', mean=FCN_MEAN, randomize=split.startswith('train'))
    trunk(n, n.data, VGG16_WIDTHS, VGG16_DEPTHS)
    n.pool5 = max_pool(n.relu5_3)
    n.fc6, n.relu6 = conv_relu(n.pool5, 4096, ks=7, pad=3)
    instances = None if split == 'deploy' else n.instances
    for name, feature, stride, kernel, window in pathways:
        pathway(n, name, n[feature], window, stride, kernel, instances=instances, min_scale=0,
                pair_fillers=PAIR_FILLERS, matrix_fillers=MATRIX_FILLERS,
                objectness_fillers=OBJECTNESS_FILLERS)
    return n.to_proto()


SPLITS = {
    'train.prototxt': 'train2017',
    'val.prototxt': 'val2017',
    'deploy.prototxt': 'deploy',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    write_splits(regions_net, SPLITS, directory)


if __name__ == '__main__':
    write_prototxts()
