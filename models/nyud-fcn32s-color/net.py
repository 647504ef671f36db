"""FCN-32s on NYUDv2, color (BGR) input, 40 classes.

Run ``python net.py`` (from any directory) to rewrite
trainval.prototxt and test.prototxt next to this file.
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

LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
    """A learned convolution (weights: lr 1, decay 1; biases: lr 2, decay 0) and its ReLU."""
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         param=LEARNED)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def score(bottom, nout):
    """A learned 1x1 classifier (no filler: zeros, or weights from a trained net)."""
    return L.Convolution(bottom, num_output=nout, kernel_size=1, pad=0, param=LEARNED)


def upsample(bottom, nout, ks, stride):
    """Fixed upsampling: a bias-free Deconvolution with lr_mult 0 (bilinear weights set
    by surgery before training)."""
    return L.Deconvolution(bottom, convolution_param=dict(num_output=nout, kernel_size=ks,
                                                          stride=stride, bias_term=False),
                           param=[dict(lr_mult=0)])


def vgg16_fc7(n, bottom):
    """VGG16 up to fc7 (fc6/fc7 as convolutions), conv1_1 padded by 100; returns drop7."""
    n.conv1_1, n.relu1_1 = conv_relu(bottom, 64, pad=100)
    n.conv1_2, n.relu1_2 = conv_relu(n.relu1_1, 64)
    n.pool1 = max_pool(n.relu1_2)

    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, 128)
    n.conv2_2, n.relu2_2 = conv_relu(n.relu2_1, 128)
    n.pool2 = max_pool(n.relu2_2)

    n.conv3_1, n.relu3_1 = conv_relu(n.pool2, 256)
    n.conv3_2, n.relu3_2 = conv_relu(n.relu3_1, 256)
    n.conv3_3, n.relu3_3 = conv_relu(n.relu3_2, 256)
    n.pool3 = max_pool(n.relu3_3)

    n.conv4_1, n.relu4_1 = conv_relu(n.pool3, 512)
    n.conv4_2, n.relu4_2 = conv_relu(n.relu4_1, 512)
    n.conv4_3, n.relu4_3 = conv_relu(n.relu4_2, 512)
    n.pool4 = max_pool(n.relu4_3)

    n.conv5_1, n.relu5_1 = conv_relu(n.pool4, 512)
    n.conv5_2, n.relu5_2 = conv_relu(n.relu5_1, 512)
    n.conv5_3, n.relu5_3 = conv_relu(n.relu5_2, 512)
    n.pool5 = max_pool(n.relu5_3)

    n.fc6, n.relu6 = conv_relu(n.pool5, 4096, ks=7, pad=0)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = conv_relu(n.drop6, 4096, ks=1, pad=0)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    return n.drop7


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    n.data, n.label = L.Python(module='nyud_layers', layer='NYUDSegDataLayer', ntop=2,
                   param_str=str(dict(nyud_dir='../../data/nyud', split=split,
                                      tops=['color', 'label'], seed=1337)))

    n.score_fr = score(vgg16_fc7(n, n.data), 40)
    n.upscore = upsample(n.score_fr, 40, ks=64, stride=32)
    n.score = crop(n.upscore, n.data)
    n.loss = L.SoftmaxWithLoss(n.score, n.label,
                               loss_param=dict(normalize=False, ignore_label=255))
    return n.to_proto()


SPLITS = {
    'trainval.prototxt': 'trainval',
    'test.prototxt': 'test',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    for filename, split in SPLITS.items():
        with open(os.path.join(directory, filename), 'w') as f:
            f.write(prototxt_text(fcn(split)))


if __name__ == '__main__':
    write_prototxts()
