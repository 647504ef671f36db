"""FCN-32s on NYUDv2, HHA input (disparity, height, angle), 40 classes.

Run ``python net.py`` (from any directory) to rewrite
trainval.prototxt and test.prototxt next to this file.
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
from fcn_layers import score, softmax_loss, upsample, vgg16_fc7, write_splits  # noqa: E402
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec, layers as L  # noqa: E402


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    n.data, n.label = L.Python(module='nyud_layers', layer='NYUDSegDataLayer', ntop=2,
                   param_str=str(dict(tops=['hha', 'label'], seed=1337,
                                      nyud_dir='../../data/nyud', split=split)))

    n.score_fr = score(vgg16_fc7(n, n.data), 40)
    n.upscore = upsample(n.score_fr, 40, ks=64, stride=32)
    n.score = crop(n.upscore, n.data)
    n.loss = softmax_loss(n.score, n.label)
    return n.to_proto()


SPLITS = {
    'trainval.prototxt': 'trainval',
    'test.prototxt': 'test',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    write_splits(fcn, SPLITS, directory)


if __name__ == '__main__':
    write_prototxts()
