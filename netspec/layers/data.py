"""Layers whose tops come from outside the net's arithmetic: Input, DummyData, Python.

``Input`` tops and the tops of ``Python`` layers without bottoms (data layers) are
fed to the jitted computation from the host; the net builder treats them as inputs.
A ``Python`` layer *with* bottoms runs on the host inside the computation through
``jax.pure_callback``, its ``backward`` wired in as the gradient.
"""
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ..blob import Blob
from ..errors import NetspecError
from ..fillers import fill
from .base import Layer, register


@register("Input")
class Input(Layer):
    """Declares net inputs; the graph builder feeds its tops (never traced itself)."""
    max_bottoms = 0


def _dummy_shapes(p, num_tops):
    if p.shape:
        shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
    else:
        legacy = list(zip(p.num, p.channels, p.height, p.width))
        shapes = [tuple(int(d) for d in s) for s in legacy]
    if len(shapes) == 1:
        shapes = shapes * num_tops
    return shapes


@register("DummyData")
class DummyData(Layer):
    """Tops filled by ``data_filler``s: constant ones once, random ones at every pass."""
    max_bottoms = 0
    min_tops = 1

    def setup(self):
        p = self.lp.dummy_data_param
        self.shapes = _dummy_shapes(p, self.num_tops)
        if len(self.shapes) != self.num_tops:
            raise self.error(f"gives {len(self.shapes)} shapes for {self.num_tops} tops")
        fillers = list(p.data_filler)
        if len(fillers) > 1 and len(fillers) != self.num_tops:
            raise self.error(f"gives {len(fillers)} data_fillers for {self.num_tops} tops; give 0, 1 or one per top")
        self.fillers = fillers * self.num_tops if len(fillers) == 1 else (fillers or [None] * self.num_tops)

    def top_shapes(self):
        return self.shapes

    def forward(self, ctx, params, bottoms):
        tops = []
        for i, (shape, filler) in enumerate(zip(self.shapes, self.fillers)):
            if filler is None or filler.type == "constant":
                tops.append(jnp.asarray(fill(filler, shape, None)))
                continue
            seed = 0 if ctx.rng is None else jax.random.randint(jax.random.fold_in(ctx.rng, i), (), 0, 2**31 - 1)
            tops.append(_host_fill(filler, shape, seed))
        return tops


def _host_fill(filler, shape, seed):
    def draw(s):
        return fill(filler, shape, np.random.RandomState(int(s)))
    return jax.pure_callback(draw, jax.ShapeDtypeStruct(shape, jnp.float32), seed)


# --- Python layers ------------------------------------------------------------

def load_python_layer(lp, phase, search_path=()):
    """Instantiate the user class named by ``python_param`` (module on ``search_path``,
    ``sys.path``, ``$NETSPEC_PYTHON_PATH``, then netspec's own ``netspec.data``)."""
    module_name, class_name = lp.python_param.module, lp.python_param.layer
    if not module_name or not class_name:
        raise NetspecError(f'layer "{lp.name}" (Python): python_param needs both "module" and "layer"')
    extra = [p for p in list(search_path) + os.environ.get("NETSPEC_PYTHON_PATH", "").split(os.pathsep)
             + [os.getcwd()] if p]
    for p in reversed(extra):
        if p not in sys.path:
            sys.path.insert(0, p)
    module = None
    for candidate in (module_name, f"netspec.data.{module_name}"):
        try:
            module = importlib.import_module(candidate)
            break
        except ModuleNotFoundError as e:
            if e.name not in (candidate, candidate.split(".")[0], "netspec.data." + module_name):
                raise
    if module is None:
        raise NetspecError(f'layer "{lp.name}" (Python): cannot import module "{module_name}"; '
                           'put it on PYTHONPATH or pass its directory with --python-path')
    cls = getattr(module, class_name, None)
    if cls is None:
        raise NetspecError(f'layer "{lp.name}" (Python): module "{module_name}" has no class "{class_name}"')
    obj = cls(lp, phase)
    if not hasattr(obj, "param_str"):
        obj.param_str = lp.python_param.param_str
    if not hasattr(obj, "phase"):
        obj.phase = phase
    return obj


class HostPythonLayer(Layer):
    """A user Python layer with bottoms, run on the host inside the traced computation."""

    def __init__(self, layer_param, bottom_shapes, phase, obj):
        self.obj = obj
        super().__init__(layer_param, bottom_shapes, phase)

    def setup(self):
        self.bottom_blobs = [Blob(s) for s in self.bottom_shapes]
        self.top_blobs = [Blob() for _ in range(self.num_tops)]
        if not getattr(self.obj, "_netspec_set_up", False):
            self.obj.setup(self.bottom_blobs, self.top_blobs)
            self.obj._netspec_set_up = True
        self.obj.reshape(self.bottom_blobs, self.top_blobs)

    def top_shapes(self):
        return [b.shape for b in self.top_blobs]

    def forward(self, ctx, params, bottoms):
        obj, bottom_blobs, top_blobs = self.obj, self.bottom_blobs, self.top_blobs
        out_types = [jax.ShapeDtypeStruct(s, jnp.float32) for s in self.top_shapes()]
        in_types = [jax.ShapeDtypeStruct(s, jnp.float32) for s in self.bottom_shapes]

        def host_forward(*arrays):
            for blob, a in zip(bottom_blobs, arrays):
                blob.data[...] = a
            obj.forward(bottom_blobs, top_blobs)
            return [t.data.copy() for t in top_blobs]

        def host_backward(*arrays):
            n = len(bottom_blobs)
            for blob, a in zip(bottom_blobs, arrays[:n]):
                blob.data[...] = a
            for blob, d in zip(top_blobs, arrays[n:]):
                blob.diff[...] = d
            for blob in bottom_blobs:
                blob.diff[...] = 0
            obj.backward(top_blobs, [True] * n, bottom_blobs)
            return [b.diff.copy() for b in bottom_blobs]

        @jax.custom_vjp
        def run(*xs):
            return tuple(jax.pure_callback(host_forward, out_types, *xs))

        def run_fwd(*xs):
            return run(*xs), xs

        def run_bwd(xs, top_diffs):
            return tuple(jax.pure_callback(host_backward, in_types, *xs, *top_diffs))

        run.defvjp(run_fwd, run_bwd)
        return list(run(*[b.astype(jnp.float32) for b in bottoms]))


@register("Python")
class PythonLayerPlaceholder(Layer):
    """Registry entry for ``Python``; nets build :class:`HostPythonLayer` or feed data-layer tops."""

    def setup(self):
        raise self.error("Python layers run through netspec.Net (they need their Python object)")
