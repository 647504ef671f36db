"""FCN-16s on NYUDv2, late fusion of color and HHA streams (the paper's FCN-16s
RGB-HHA; the reference repository has no prototxt for it, so this extends
nyud-fcn32s-color-hha with a pool4 skip per stream, averaged like the fc7 scores).

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
from fcn_layers import (  # noqa: E402
    fuse_skip, score, softmax_loss, upsample, vgg16_fc7, write_splits)
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec, layers as L, params as P  # noqa: E402


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    n.color, n.hha, n.label = L.Python(module='nyud_layers', layer='NYUDSegDataLayer', ntop=3,
                   param_str=str(dict(nyud_dir='../../data/nyud', split=split,
                                      tops=['color', 'hha', 'label'], seed=1337)))

    # one VGG16 stream per modality, every name suffixed by it (conv1_1color, ...)
    n.score_frcolor = score(vgg16_fc7(n, n.color, suffix='color'), 40)
    n.score_frhha = score(vgg16_fc7(n, n.hha, suffix='hha'), 40)
    # late fusion: average the two streams' scores, at stride 32 and at pool4
    n.score_fused = L.Eltwise(n.score_frcolor, n.score_frhha, operation=P.Eltwise.SUM,
                              coeff=[0.5, 0.5])
    n.upscore2 = upsample(n.score_fused, 40, ks=4, stride=2)

    n.score_pool4color = score(n.pool4color, 40)
    n.score_pool4hha = score(n.pool4hha, 40)
    n.score_pool4_fused = L.Eltwise(n.score_pool4color, n.score_pool4hha,
                                    operation=P.Eltwise.SUM, coeff=[0.5, 0.5])
    n.score_pool4c, n.fuse_pool4 = fuse_skip(n.upscore2, n.score_pool4_fused)
    n.upscore16 = upsample(n.fuse_pool4, 40, ks=32, stride=16)
    n.score = crop(n.upscore16, n.color)
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
