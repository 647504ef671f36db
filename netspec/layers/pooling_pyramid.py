"""SPP: spatial pyramid pooling (Caffe's ``spp_layer.cpp``).

Level l (0 <= l < pyramid_height) pools the bottom into about 2**l x 2**l bins with
Caffe's Pooling layer (MAX or AVE, Caffe's CEIL output sizes, tie-breaking and AVE
divisors), using per axis kernel = ceil(size / bins), stride = kernel and
pad = (kernel * bins - size + 1) // 2.  Each level's (N, C, bh, bw) output is
flattened to (N, C * bh * bw) and the levels are concatenated along axis 1 in level
order.  With pyramid_height 1 the single level's (N, C, 1, 1) pooling output is the
top itself (Caffe skips the Flatten and Concat then).

Caffe builds its Pooling layers with these parameters, so a size for which
pad >= kernel (for instance height 3 at a level with 4 bins) fails there and here.
"""
import math

import jax.numpy as jnp

from ..errors import NetspecError
from ..proto import caffe_pb2
from .base import Layer, register
from .vision import Pooling

P = caffe_pb2


def level_pooling(level, height, width):
    """Caffe's ``SPPLayer::GetPoolingParam`` geometry: ((kernel_h, kernel_w), (pad_h, pad_w))."""
    bins = 2 ** level
    kernels, pads = [], []
    for size in (height, width):
        kernel = math.ceil(size / bins)
        kernels.append(kernel)
        pads.append((kernel * bins - size + 1) // 2)
    return tuple(kernels), tuple(pads)


@register("SPP")
class SPP(Layer):
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    channels_last = True        # the Pooling levels compute channels-last

    def setup(self):
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-axis (N, C, H, W) bottom, got shape {shape}")
        if shape[2] < 1 or shape[3] < 1:
            raise self.error(f"the bottom's height and width must be positive, got shape {shape}")
        p = self.lp.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise self.error("spp_param.pyramid_height must be set (>= 1)")
        methods = {P.SPPParameter.MAX: P.PoolingParameter.MAX,
                   P.SPPParameter.AVE: P.PoolingParameter.AVE}
        if p.pool not in methods:
            raise self.error("STOCHASTIC pooling is not supported; use MAX or AVE")
        self.levels = []
        for level in range(self.height):
            kernel, pad = level_pooling(level, shape[2], shape[3])
            lp = P.LayerParameter(name=f"{self.name}_level{level}", type="Pooling",
                                  bottom=list(self.lp.bottom[:1]), top=[f"level{level}"])
            pp = lp.pooling_param
            pp.pool = methods[p.pool]
            pp.kernel_h, pp.kernel_w = kernel
            pp.stride_h, pp.stride_w = kernel
            pp.pad_h, pp.pad_w = pad
            try:
                self.levels.append(Pooling(lp, [shape], self.phase))
            except NetspecError as e:
                raise self.error(f"pyramid level {level} (kernel {kernel}, stride {kernel}, "
                                 f"pad {pad} for a {shape[2]}x{shape[3]} bottom) cannot be "
                                 f"pooled: {e}") from None

    def top_shapes(self):
        level_shapes = [pool.top_shapes()[0] for pool in self.levels]
        if self.height == 1:
            return [level_shapes[0]]
        n = self.bottom_shapes[0][0]
        return [(n, sum(c * h * w for _, c, h, w in level_shapes))]

    def forward(self, ctx, params, bottoms):
        pooled = [pool.forward(ctx, [], bottoms)[0] for pool in self.levels]   # (N, h, w, C)
        if self.height == 1:
            return pooled
        n = self.bottom_shapes[0][0]
        flat = [y.transpose(0, 3, 1, 2).reshape(n, -1) for y in pooled]     # Caffe's Flatten
        return [jnp.concatenate(flat, axis=1)]
