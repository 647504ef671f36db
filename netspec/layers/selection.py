"""Layers that pick items of the batch: Filter and BatchReindex.

Filter (``filter_layer.cpp``): bottoms b_0 .. b_{k-1} and a selector (last bottom,
(N, 1, ...)); top i holds the items of b_i whose selector value is nonzero, in
order.  The top batch size is the number of nonzero selector values, which a
compiled computation cannot learn while it runs: the layer is built with that
number (``selected_count``), known before the pass because the selector comes from
a data layer or a net input.  The backward copies each top diff back to its item
and leaves zeros elsewhere; nothing flows to the selector.  That is the exact
derivative of the gather, which autodiff produces.

BatchReindex (``batch_reindex_layer.cpp``): top[n] = bottom[0][index[n]] with a 1-D
index bottom (values truncated to integers, as Caffe's cast).  The backward adds
each top diff into its source item (items picked twice accumulate), the exact
derivative of the gather.  Caffe aborts on an index outside [0, N); here indices
are clamped into that range.  No gradient flows to the index.
"""
import jax.numpy as jnp
from jax import lax

from .base import TEST, Layer, register


@register("Filter")
class Filter(Layer):
    min_bottoms, max_bottoms = 2, None
    min_tops, max_tops = 1, None

    def __init__(self, layer_param, bottom_shapes, phase=TEST, selected_count=None):
        self.selected_count = selected_count
        super().__init__(layer_param, bottom_shapes, phase)

    def setup(self):
        if self.num_tops != len(self.bottom_shapes) - 1:
            raise self.error(f"needs one top per filtered bottom (all bottoms but the last, the "
                             f"selector): {len(self.bottom_shapes) - 1} tops, got {self.num_tops}")
        selector = self.bottom_shapes[-1]
        if len(selector) < 1 or any(d != 1 for d in selector[1:]):
            raise self.error(f"the selector (last bottom) must be (N,) or (N, 1, ...) with all "
                             f"axes but the first of size 1, got shape {selector}")
        self.batch = selector[0]
        for i, shape in enumerate(self.bottom_shapes[:-1]):
            if len(shape) < 1 or shape[0] != self.batch:
                raise self.error(f"bottom[{i}] shape {shape} must have the selector's first "
                                 f"dimension {self.batch}")
        if self.selected_count is None:
            raise self.error(
                "its top batch size is the number of nonzero selector values, which must be "
                "known before the pass: feed the selector (last bottom "
                f'"{self.lp.bottom[-1] if self.lp.bottom else "?"}") from a data layer or a net '
                "input, not from a computed blob")
        self.selected_count = int(self.selected_count)
        if not 0 <= self.selected_count <= self.batch:
            raise self.error(f"selected_count {self.selected_count} must be between 0 and the "
                             f"batch size {self.batch}")

    def top_shapes(self):
        return [(self.selected_count,) + tuple(s[1:]) for s in self.bottom_shapes[:-1]]

    def forward(self, ctx, params, bottoms):
        selector = lax.stop_gradient(bottoms[-1]).reshape(self.batch)
        # indices of the nonzero selector values in order; slots past the true count (only
        # if the count was wrong) point outside the batch and read zeros
        (index,) = jnp.nonzero(selector != 0, size=self.selected_count, fill_value=self.batch)
        return [b.at[index].get(mode="fill", fill_value=0) for b in bottoms[:-1]]


@register("BatchReindex")
class BatchReindex(Layer):
    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def setup(self):
        data, index = self.bottom_shapes
        if len(index) != 1:
            raise self.error(f"bottom[1] (the index) must have exactly 1 axis, got shape {index}")
        if len(data) < 1:
            raise self.error("bottom[0] must have at least 1 axis")

    def top_shapes(self):
        data, index = self.bottom_shapes
        return [(index[0],) + tuple(data[1:])]

    def forward(self, ctx, params, bottoms):
        x, index = bottoms
        index = lax.stop_gradient(index).astype(jnp.int32)     # C++ cast: toward zero
        index = jnp.clip(index, 0, self.bottom_shapes[0][0] - 1)
        return [jnp.take(x, index, axis=0)]
