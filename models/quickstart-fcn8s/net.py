"""A slim FCN-8s for the quick start: voc-fcn8s's topology at a fraction of the width.

Five conv blocks of 8-16-32-64-64 channels, fc6/fc7 as 128-channel convolutions,
and the three score / upsample / crop / fuse branches of FCN-8s, for 6 classes
(background + 5 shapes) of the synthetic VOC-layout dataset
(``python -m netspec.data.synthetic``).  It is trained from scratch, so every
learned layer has a filler (MSRA before a ReLU, small Gaussian noise for the score
layers) and the upsampling Deconvolutions are bilinear-filled and fixed.  The loss is
normalized over valid pixels, so ordinary learning rates apply.

Run ``python net.py`` (from any directory) to rewrite train.prototxt and
val.prototxt next to this file.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
try:
    import netspec.net_spec  # noqa: F401
except ImportError:  # running from a source checkout: its root is two levels up
    sys.path.insert(0, os.path.dirname(MODELS))
if MODELS not in sys.path:  # for fcn_layers, the helpers the models share
    sys.path.insert(0, MODELS)
import fcn_layers  # noqa: E402
from fcn_layers import conv_relu, fuse_skip, vgg_conv_blocks, write_splits  # noqa: E402
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec, layers as L, params as P  # noqa: E402

NUM_CLASSES = 6
WIDTHS = (8, 16, 32, 64, 64)
FC_WIDTH = 128
DATA_MEAN = (104.00699, 116.66877, 122.67892)
# fillers of the convolutions that feed a ReLU
MSRA = dict(weight_filler=dict(type='msra'), bias_filler=dict(type='constant'))


def score(bottom):
    """A learned 1x1 classifier with small random weights, so the first scores are near
    zero (FCN starts its score layers at zero; small noise does the same job)."""
    return fcn_layers.score(bottom, NUM_CLASSES, weight_filler=dict(type='gaussian', std=0.01),
                            bias_filler=dict(type='constant'))


def upsample(bottom, ks, stride):
    """Fixed bilinear upsampling: a bias-free Deconvolution, bilinear-filled, lr_mult 0.

    ``group: NUM_CLASSES`` makes each class upsample on its own: Caffe's bilinear filler
    puts the kernel in every (input, output) slice, so without groups the classes mix.
    """
    return fcn_layers.upsample(bottom, NUM_CLASSES, ks, stride, group=NUM_CLASSES,
                               weight_filler=dict(type='bilinear'))


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer', ntop=2,
                               param_str=str(dict(voc_dir='../../data/quickstart', split=split,
                                                  mean=DATA_MEAN, seed=1337)))
    # VGG16's conv blocks at WIDTHS, MSRA-initialised for their ReLUs (conv1_1 keeps
    # FCN's 100-pixel padding, so any input size aligns after the crops)
    pool5 = vgg_conv_blocks(n, n.data, widths=WIDTHS, **MSRA)

    # fc6 / fc7 as convolutions; no dropout: the net is small and must learn in minutes
    n.fc6, n.relu6 = conv_relu(pool5, FC_WIDTH, ks=7, pad=0, **MSRA)
    n.fc7, n.relu7 = conv_relu(n.relu6, FC_WIDTH, ks=1, pad=0, **MSRA)

    n.score_fr = score(n.relu7)
    n.upscore2 = upsample(n.score_fr, ks=4, stride=2)

    n.score_pool4 = score(n.pool4)
    n.score_pool4c, n.fuse_pool4 = fuse_skip(n.upscore2, n.score_pool4)
    n.upscore_pool4 = upsample(n.fuse_pool4, ks=4, stride=2)

    n.score_pool3 = score(n.pool3)
    n.score_pool3c, n.fuse_pool3 = fuse_skip(n.upscore_pool4, n.score_pool3)
    n.upscore8 = upsample(n.fuse_pool3, ks=16, stride=8)

    n.score = crop(n.upscore8, n.data)
    n.loss = L.SoftmaxWithLoss(n.score, n.label,
                               loss_param=dict(normalization=P.Loss.VALID, ignore_label=255))
    return n.to_proto()


SPLITS = {
    'train.prototxt': 'train',
    'val.prototxt': 'val',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    write_splits(fcn, SPLITS, directory)


if __name__ == '__main__':
    write_prototxts()
