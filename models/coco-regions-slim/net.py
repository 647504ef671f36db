"""A slim pairwise region net for the synthetic COCO-format instance set: the topology
of coco-regions-vgg16 (Long's thesis, ch. 4) at a fraction of the width, trained from
scratch on 2 CPU cores in minutes (``python models/coco-regions-slim/run.py``).

Four conv blocks of 16-32-64-64 channels (two 3x3 convolutions each, pad 1, 2x2 max
pooling between blocks, so the grids sit on the image) and three pathways, windows
doubling so that ``min_scale`` 0.5 would hand every object size to one pathway:

    pathway  feature  stride  kernel  window      K
    p1       conv2_2   2 px    5x5    24 x 24 px  12
    p2       conv3_2   4 px    5x5    48 x 48 px  12
    p3       conv4_2   8 px    5x5    96 x 96 px  12

Each pathway is coco-regions-vgg16's: pair Convolution (K^2 outputs) -> PairTranspose ->
shared K^2 x K^2 matrix -> ``regions_p{i}`` under PairRegionLoss (stride = upsampling),
and ``objectness_p{i}`` under SigmoidCrossEntropyLoss.  ``regions_net(split, transpose=,
matrix=, pathways=)`` builds the ablation variants of the thesis's Fig. 4.4 too.
Trained from scratch, so every learned layer has a filler (MSRA before a ReLU, Xavier
for the pair values and the matrix, small Gaussian noise for objectness).

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
from fcn_layers import write_splits  # noqa: E402
from region_layers import FCN_MEAN, coco_data, pathway, trunk  # noqa: E402
from netspec.net_spec import NetSpec, layers as L  # noqa: E402

WIDTHS = (16, 32, 64, 64)
DEPTHS = (2, 2, 2, 2)
# (name, feature blob, stride = upsampling, kernel, K)
PATHWAYS = (
    ('p1', 'relu2_2', 2, 5, 12),
    ('p2', 'relu3_2', 4, 5, 12),
    ('p3', 'relu4_2', 8, 5, 12),
)
MIN_SCALE = 0       # the thesis: any instance that fits the window trains the centre
INPUT_SIZE = 96     # the deploy net's example input (run.py's images are 96 x 96)
MSRA = dict(weight_filler=dict(type='msra'), bias_filler=dict(type='constant'))
XAVIER = dict(weight_filler=dict(type='xavier'), bias_filler=dict(type='constant'))
SMALL = dict(weight_filler=dict(type='gaussian', std=0.01), bias_filler=dict(type='constant'))


def regions_net(split, transpose=True, matrix=True, pathways=PATHWAYS, coco_dir='../../data/coco-synthetic',
                mean=FCN_MEAN, seed=1337, min_scale=MIN_SCALE):
    """The net for one split ('train', 'val' or 'deploy'), as a NetParameter."""
    n = NetSpec()
    if split == 'deploy':
        n.data = L.Input(shape=dict(dim=[1, 3, INPUT_SIZE, INPUT_SIZE]))
    else:
        coco_data(n, split, coco_dir, mean=mean, randomize=split == 'train', seed=seed)
    blocks = max(int(feature[4]) for _, feature, _, _, _ in pathways)
    trunk(n, n.data, WIDTHS[:blocks], DEPTHS[:blocks], **MSRA)
    instances = None if split == 'deploy' else n.instances
    for name, feature, stride, kernel, window in pathways:
        pathway(n, name, n[feature], window, stride, kernel, instances=instances, transpose=transpose,
                matrix=matrix, min_scale=min_scale, pair_fillers=XAVIER, matrix_fillers=XAVIER,
                objectness_fillers=SMALL)
    return n.to_proto()


SPLITS = {
    'train.prototxt': 'train',
    'val.prototxt': 'val',
    'deploy.prototxt': 'deploy',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    write_splits(regions_net, SPLITS, directory)


if __name__ == '__main__':
    write_prototxts()
