"""FCN-AlexNet on PASCAL VOC: CaffeNet body, one 63x63 stride-32 upsampling.

Run ``python net.py`` (from any directory) to rewrite
train.prototxt and val.prototxt next to this file.
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
from fcn_layers import max_pool, score, softmax_loss, upsample, voc_data, write_splits  # noqa: E402
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec, layers as L  # noqa: E402


def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1):
    """A convolution (default learning rates, as the reference) and its in-place ReLU."""
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         group=group)
    return conv, L.ReLU(conv, in_place=True)


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    voc_data(n, split)

    # the CaffeNet body, conv1 padded by 100
    n.conv1, n.relu1 = conv_relu(n.data, 11, 96, stride=4, pad=100)
    n.pool1 = max_pool(n.relu1, 3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    n.conv2, n.relu2 = conv_relu(n.norm1, 5, 256, pad=2, group=2)
    n.pool2 = max_pool(n.relu2, 3, stride=2)
    n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
    n.conv3, n.relu3 = conv_relu(n.norm2, 3, 384, pad=1)
    n.conv4, n.relu4 = conv_relu(n.relu3, 3, 384, pad=1, group=2)
    n.conv5, n.relu5 = conv_relu(n.relu4, 3, 256, pad=1, group=2)
    n.pool5 = max_pool(n.relu5, 3, stride=2)

    # fc6 / fc7 as convolutions
    n.fc6, n.relu6 = conv_relu(n.pool5, 6, 4096)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = conv_relu(n.drop6, 1, 4096)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)

    n.score_fr = score(n.drop7, 21)
    n.upscore = upsample(n.score_fr, 21, ks=63, stride=32)
    n.score = crop(n.upscore, n.data)
    # normalized loss (per valid pixel), unlike the VGG FCNs
    n.loss = softmax_loss(n.score, n.label, normalize=True)
    return n.to_proto()


SPLITS = {
    'train.prototxt': 'train',
    'val.prototxt': 'seg11valid',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    write_splits(fcn, SPLITS, directory)


if __name__ == '__main__':
    write_prototxts()
