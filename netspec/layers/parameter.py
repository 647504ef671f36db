"""Parameter (Caffe's ``parameter_layer.hpp``): a learned blob of
``parameter_param.shape`` exposed as the layer's only top.

No bottoms; the top is the blob (its diff is the blob's diff).  Caffe does not fill
the blob, so it starts at zeros unless weights are loaded.
"""
from .base import Layer, register


@register("Parameter")
class Parameter(Layer):
    min_bottoms = max_bottoms = 0
    min_tops = max_tops = 1

    def setup(self):
        p = self.lp.parameter_param
        self.shape = tuple(int(d) for d in p.shape.dim)
        if any(d < 0 for d in self.shape):
            raise self.error(f"parameter_param.shape {list(self.shape)} has a negative dimension")

    def top_shapes(self):
        return [self.shape]

    def param_shapes(self):
        return [self.shape]

    def param_fillers(self):
        return [None]       # zeros, as Caffe's freshly allocated blob

    def forward(self, ctx, params, bottoms):
        return [params[0]]
