"""Layer helpers shared by the pairwise region nets (J. Long's thesis, ch. 4):
a VGG-style trunk aligned to the image grid, the COCO instance data layer and one
region pathway (pair convolution -> PairTranspose -> shared K^2 x K^2 matrix ->
PairRegionLoss, plus an objectness score).

Each net.py puts this directory on sys.path and imports what it needs.

**Alignment.**  The FCN nets pad conv1_1 by 100 and crop their scores back to the
image; a region pathway has no crop, so its grid must sit on the image as
PairRegionLoss and ``netspec regions`` expect: grid cell (y, x) of a stride-s pathway
is the pixel block [s*y, s*y + s) x [s*x, s*x + s).  Here every 3x3 convolution is
padded by 1 (conv1_1 included), every 2x2/2 max pooling halves the grid (Caffe's
ceil rounding: ceil(H/2)), fc6 keeps VGG16's 7x7 kernel with pad 3, and the pathway
convolutions are padded by kernel//2, so a block-b feature cell j covers exactly the
pixels [2^(b-1) j, 2^(b-1) (j + 1)).  The layer names and blob shapes are VGG16's, so
the ILSVRC weights transplant by name (fc6 4096x25088 -> 4096x512x7x7).
"""
from fcn_layers import LEARNED, conv_relu, max_pool
from netspec.net_spec import layers as L, params as P

FCN_MEAN = (104.00699, 116.66877, 122.67892)


def trunk(n, bottom, widths, depths, **fillers):
    """VGG-style conv blocks conv{b}_{i} / relu{b}_{i} / pool{b} on ``n``, every conv padded
    by 1 (no FCN pad 100: the grid stays on the image).  Returns ``{block: last ReLU top}``
    and puts pool{b} after every block but the last (the caller pools it if it needs to)."""
    top, outs = bottom, {}
    for block, (width, depth) in enumerate(zip(widths, depths), start=1):
        if block > 1:
            n[f'pool{block - 1}'] = max_pool(top)
            top = n[f'pool{block - 1}']
        for i in range(1, depth + 1):
            n[f'conv{block}_{i}'], n[f'relu{block}_{i}'] = conv_relu(top, width, **fillers)
            top = n[f'relu{block}_{i}']
        outs[block] = top
    return outs


def coco_data(n, split, coco_dir, mean=FCN_MEAN, randomize=None, seed=1337, **extra):
    """The COCOInstanceDataLayer: tops ``data`` (whole image, BGR, mean subtracted) and
    ``instances`` (0 background, 1.. instances, 255 void)."""
    params = dict(coco_dir=coco_dir, split=split, mean=tuple(mean), seed=seed, **extra)
    if randomize is not None:
        params['randomize'] = randomize
    n.data, n.instances = L.Python(module='coco_layers', layer='COCOInstanceDataLayer', ntop=2,
                                   param_str=str(params))
    return n.data


def pathway(n, name, feature, window, stride, kernel, instances=None, transpose=True, matrix=True,
            min_scale=None, pair_fillers=None, matrix_fillers=None, objectness_fillers=None):
    """One region pathway ``name`` (p1, p2, ...) off the blob ``feature`` on ``n``.

    pair_{name}:       Convolution, ``kernel`` x ``kernel`` (pad kernel//2), window^2 outputs:
                       the pairwise values p(x, Δ) of a window x window region at every centre;
    pairT_{name}:      PairTranspose: p^T(x, Δ) = p(x + Δ, -Δ) (with ``transpose``);
    regions_{name}:    the shared window^2 x window^2 matrix (a 1x1 Convolution, with ``matrix``)
                       -- the region logits whatever the variant;
    objectness_{name}: a 1x1 Convolution of pair_{name} (centre features of kernel x kernel cells);
    with ``instances``: loss_{name} and objtarget_{name} (PairRegionLoss, stride = upsample =
    ``stride``) and objloss_{name} (SigmoidCrossEntropyLoss over the target, void 255 ignored,
    normalised over counted centres)."""
    k2 = window * window
    pair = L.Convolution(feature, num_output=k2, kernel_size=kernel, pad=kernel // 2,
                         param=LEARNED, **(pair_fillers or {}))
    top = pair
    if transpose:
        n[f'pair_{name}'] = pair
        top = L.PairTranspose(top, pair_param=dict(window=window))
    if matrix:
        n[f'pairT_{name}' if transpose else f'pair_{name}'] = top
        top = L.Convolution(top, num_output=k2, kernel_size=1, pad=0, param=LEARNED,
                            **(matrix_fillers or {}))
    n[f'regions_{name}'] = top
    n[f'objectness_{name}'] = L.Convolution(pair, num_output=1, kernel_size=1, pad=0, param=LEARNED,
                                            **(objectness_fillers or {}))
    if instances is None:
        return
    pair_param = dict(window=window, stride=stride, upsample=stride)
    if min_scale is not None:
        pair_param['min_scale'] = min_scale
    n[f'loss_{name}'], n[f'objtarget_{name}'] = L.PairRegionLoss(
        n[f'regions_{name}'], instances, ntop=2, pair_param=pair_param)
    n[f'objloss_{name}'] = L.SigmoidCrossEntropyLoss(
        n[f'objectness_{name}'], n[f'objtarget_{name}'],
        loss_param=dict(ignore_label=255, normalization=P.Loss.VALID))
