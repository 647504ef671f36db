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
try:
    import netspec.net_spec  # noqa: F401
except ImportError:  # running from a source checkout: its root is two levels up
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec, layers as L, params as P, prototxt_text  # noqa: E402

NUM_CLASSES = 6
WIDTHS = (8, 16, 32, 64, 64)
FC_WIDTH = 128
LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
DATA_MEAN = (104.00699, 116.66877, 122.67892)


def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
    """A learned convolution, MSRA-initialised for the ReLU that follows it."""
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         weight_filler=dict(type='msra'), bias_filler=dict(type='constant'),
                         param=LEARNED)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def score(bottom):
    """A learned 1x1 classifier with small random weights, so the first scores are near
    zero (FCN starts its score layers at zero; small noise does the same job)."""
    return L.Convolution(bottom, num_output=NUM_CLASSES, kernel_size=1, pad=0,
                         weight_filler=dict(type='gaussian', std=0.01),
                         bias_filler=dict(type='constant'), param=LEARNED)


def upsample(bottom, ks, stride):
    """Fixed bilinear upsampling: a bias-free Deconvolution, bilinear-filled, lr_mult 0.

    ``group: NUM_CLASSES`` makes each class upsample on its own: Caffe's bilinear filler
    puts the kernel in every (input, output) slice, so without groups the classes mix.
    """
    return L.Deconvolution(bottom, convolution_param=dict(num_output=NUM_CLASSES, kernel_size=ks,
                                                          stride=stride, bias_term=False,
                                                          group=NUM_CLASSES,
                                                          weight_filler=dict(type='bilinear')),
                           param=[dict(lr_mult=0)])


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer', ntop=2,
                               param_str=str(dict(voc_dir='../../data/quickstart', split=split,
                                                  mean=DATA_MEAN, seed=1337)))
    w1, w2, w3, w4, w5 = WIDTHS
    # conv1_1 keeps FCN's 100-pixel padding, so any input size aligns after the crops
    n.conv1_1, n.relu1_1 = conv_relu(n.data, w1, pad=100)
    n.conv1_2, n.relu1_2 = conv_relu(n.relu1_1, w1)
    n.pool1 = max_pool(n.relu1_2)

    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, w2)
    n.conv2_2, n.relu2_2 = conv_relu(n.relu2_1, w2)
    n.pool2 = max_pool(n.relu2_2)

    n.conv3_1, n.relu3_1 = conv_relu(n.pool2, w3)
    n.conv3_2, n.relu3_2 = conv_relu(n.relu3_1, w3)
    n.conv3_3, n.relu3_3 = conv_relu(n.relu3_2, w3)
    n.pool3 = max_pool(n.relu3_3)

    n.conv4_1, n.relu4_1 = conv_relu(n.pool3, w4)
    n.conv4_2, n.relu4_2 = conv_relu(n.relu4_1, w4)
    n.conv4_3, n.relu4_3 = conv_relu(n.relu4_2, w4)
    n.pool4 = max_pool(n.relu4_3)

    n.conv5_1, n.relu5_1 = conv_relu(n.pool4, w5)
    n.conv5_2, n.relu5_2 = conv_relu(n.relu5_1, w5)
    n.conv5_3, n.relu5_3 = conv_relu(n.relu5_2, w5)
    n.pool5 = max_pool(n.relu5_3)

    # fc6 / fc7 as convolutions; no dropout: the net is small and must learn in minutes
    n.fc6, n.relu6 = conv_relu(n.pool5, FC_WIDTH, ks=7, pad=0)
    n.fc7, n.relu7 = conv_relu(n.relu6, FC_WIDTH, ks=1, pad=0)

    n.score_fr = score(n.relu7)
    n.upscore2 = upsample(n.score_fr, ks=4, stride=2)

    n.score_pool4 = score(n.pool4)
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore_pool4 = upsample(n.fuse_pool4, ks=4, stride=2)

    n.score_pool3 = score(n.pool3)
    n.score_pool3c = crop(n.score_pool3, n.upscore_pool4)
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
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
    for filename, split in SPLITS.items():
        with open(os.path.join(directory, filename), 'w') as f:
            f.write(prototxt_text(fcn(split)))


if __name__ == '__main__':
    write_prototxts()
