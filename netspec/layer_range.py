"""Passes over a contiguous range of a net's layers: pycaffe's ``net.forward(start=, end=)``
and ``net.backward(start=, end=)`` (Caffe's ``ForwardFromTo`` / ``BackwardFromTo``).

A range ``[first, last]`` of layer indices (Caffe's layer order, data layers included)
becomes a graph of its own: the blobs its layers read but do not produce first become
its inputs, fed with their current values, so that a range runs on whatever the net's
blobs hold, as Caffe's layers read their bottoms from memory.

- ``forward_range``: the range's tops (every blob it writes) and the layers' new state.
- ``backward_range``: Caffe's backward over the range.  The diffs that flow in are the
  stored diffs of the blobs the range writes and no later layer of the range reads
  (loss tops hold their loss weight, as in Caffe; DeepDream sets the diff of the last
  layer's top); the range is recomputed from its inputs and differentiated.  It gives
  the param gradients of the range's layers, the diff of every blob the range writes
  (where it is first written, as Caffe's in-place layers share one diff) and the diff
  of every blob it reads from outside.

Ranges run at exact shapes (no buckets); each range is compiled once per input shapes.
"""
from dataclasses import replace

import jax
import jax.numpy as jnp

from . import compiler
from .errors import NetspecError
from .graph import Node


def layer_index(graph, name, what):
    """The index of layer ``name`` in ``graph.nodes``, or a one-line error for ``what``."""
    for i, node in enumerate(graph.nodes):
        if node.name == name:
            return i
    raise NetspecError(f'{what}: the net has no layer "{name}" (layers: '
                       f'{", ".join(n.name for n in graph.nodes)})')


class LayerRange:
    """Layers ``first..last`` (inclusive) of ``graph`` as a graph of their own."""

    def __init__(self, graph, first, last):
        if not 0 <= first <= last < len(graph.nodes):
            raise NetspecError(f"layer range {first}..{last} is empty or outside the net's "
                               f"{len(graph.nodes)} layers (start must come before end)")
        self.first, self.last = first, last
        nodes = graph.nodes[first:last + 1]
        produced, reads, writes = set(), [], []
        for node in nodes:
            for b in node.bottoms:
                if b not in produced and b not in reads:
                    reads.append(b)
            for t in node.tops:
                if node.is_input and t not in reads:
                    reads.append(t)      # an input layer in the range: its blob as it is now
                produced.add(t)
                if t not in writes:
                    writes.append(t)
        input_tops = {t for n in nodes if n.is_input for t in n.tops}
        self.reads = reads               # blobs fed from the net's current values
        self.writes = [t for t in writes if t not in input_tops]
        # blobs whose diff comes from outside the range: written here, read by no later layer here
        self.exposed = []
        for i, node in enumerate(nodes):
            for t in node.tops:
                if node.is_input or t in self.exposed:
                    continue
                if not any(t in later.bottoms for later in nodes[i + 1:]):
                    self.exposed.append(t)
        feeds = [Node(name=f"(range input {b})", type="Input", lp=None, bottoms=[], tops=[b],
                      loss_weights=[0.0], is_input=True) for b in reads if b not in input_tops]
        kept = feeds + list(nodes)
        shapes = {b: graph.blob_shapes[b] for b in reads + writes}
        self.graph = replace(graph, nodes=kept, blob_shapes=shapes, inputs=list(reads),
                             outputs=list(self.exposed))

    @property
    def probed(self):
        """Blobs first written in the range (their diffs come from probes there)."""
        return [t for t in self.writes if t not in self.reads]


def forward_range(rng_, train, options=None):
    """``run(params, state, inputs, rng) -> (written blobs, new state)``."""
    options = options or {}
    graph = rng_.graph

    def run(params, state, inputs, rng):
        blobs, _, new_state = compiler.forward(graph, params, state, inputs, train=train, rng=rng,
                                               keep=rng_.writes, **options)
        return blobs, new_state
    return run


def backward_range(rng_, train, options=None):
    """``run(params, state, inputs, seeds, rng) -> (param grads, written-blob diffs, read-blob
    diffs)``; ``seeds``: ``{exposed blob: diff}``."""
    options = options or {}
    graph = rng_.graph
    probed = rng_.probed

    def objective(params, probes, inputs, state, seeds, rng):
        blobs, _, _ = compiler.forward(graph, params, state, inputs, train=train, rng=rng, probes=probes,
                                       keep=list(seeds), **options)
        return sum((jnp.sum(seeds[n] * blobs[n]) for n in seeds), jnp.zeros((), jnp.float32))

    grad = jax.grad(objective, argnums=(0, 1, 2))

    def run(params, state, inputs, seeds, rng):
        probes = {n: jnp.zeros(graph.blob_shapes[n], jnp.float32) for n in probed}
        return grad(params, probes, inputs, state, seeds, rng)
    return run
