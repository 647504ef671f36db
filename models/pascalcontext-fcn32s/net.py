"""FCN-32s on PASCAL-Context (59 classes + background).

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
from fcn_layers import (  # noqa: E402
    context_data, score, softmax_loss, upsample, vgg16_fc7, write_splits)
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec  # noqa: E402


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    context_data(n, split)
    n.score_fr = score(vgg16_fc7(n, n.data), 60)
    n.upscore = upsample(n.score_fr, 60, ks=64, stride=32)
    n.score = crop(n.upscore, n.data)
    n.loss = softmax_loss(n.score, n.label)
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
