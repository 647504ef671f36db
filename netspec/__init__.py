"""netspec: Caffe nets, solvers and weights, compiled to JAX.

The pycaffe-compatible surface (``import netspec as caffe``): ``Net``, ``TRAIN``,
``TEST``, ``Layer`` (for Python layers), ``set_mode_cpu``/``set_mode_gpu``/
``set_device``, the NetSpec DSL (``layers``, ``params``, ``NetSpec``, ``to_proto``),
the solvers (``get_solver``, ``SGDSolver``, ...), ``io`` (``caffe.io.Transformer``,
``load_image``, ...), ``Classifier``, ``Detector``, ``proto.caffe_pb2`` and
``layer_type_list()``.
"""
from .host_memory import keep_freed_memory

keep_freed_memory()     # before JAX starts its threads: see netspec.host_memory

from .blob import Blob  # noqa: E402
from .errors import NetspecError  # noqa: E402
from .layers.base import TEST, TRAIN  # noqa: E402
from .net import Net  # noqa: E402
from .python_layer import Layer  # noqa: E402

__version__ = "0.1.0"

# pycaffe's ``caffe.layers``/``caffe.params`` are the NetSpec DSL, so ``netspec.layers``
# is too; the layer implementations stay importable as the module ``netspec.layers``
# (``from netspec.layers import register``), which Python resolves through sys.modules.
from .net_spec import NetSpec, layers, params, to_proto  # noqa: E402,F401

_LAZY = {
    "get_solver": "netspec.solver", "SGDSolver": "netspec.solver", "NesterovSolver": "netspec.solver",
    "AdaGradSolver": "netspec.solver", "RMSPropSolver": "netspec.solver",
    "AdaDeltaSolver": "netspec.solver", "AdamSolver": "netspec.solver",
    "CaffeModule": "netspec.flax_module",
    "Classifier": "netspec.classifier", "Detector": "netspec.detector",
    "CaffeNNXModule": "netspec.nnx_module",
}
# submodules pycaffe scripts reach as attributes (``caffe.io.load_image``,
# ``caffe.proto.caffe_pb2``): the module itself, after importing the one named
_LAZY_MODULES = {"io": ("netspec.io", "netspec.io"), "proto": ("netspec.proto.caffe_pb2", "netspec.proto"),
                  "draw": ("netspec.draw", "netspec.draw")}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        import importlib
        load, module = _LAZY_MODULES[name]
        importlib.import_module(load)
        return importlib.import_module(module)
    raise AttributeError(f"module 'netspec' has no attribute {name!r}")


def layer_type_list():
    """The layer types netspec runs, sorted (pycaffe's ``caffe.layer_type_list()``): the
    compiled layers, Caffe's data layers run on the host, and ``Python``."""
    from .caffe_data.layers import HOST_DATA_LAYERS
    from .layers.base import registered_types
    return sorted({str(t) for t in registered_types()} | {str(t) for t in HOST_DATA_LAYERS} | {"Python"})


def set_mode_cpu():
    """Run on the CPU (pycaffe's ``caffe.set_mode_cpu()``)."""
    import jax
    jax.config.update("jax_default_device", jax.devices("cpu")[0])


def set_mode_gpu():
    """Run on the first accelerator if JAX has one (GPU or TPU); stay on the CPU otherwise."""
    import jax
    accelerators = [d for d in jax.devices() if d.platform != "cpu"]
    if accelerators:
        jax.config.update("jax_default_device", accelerators[0])


def set_device(index):
    """Use JAX device ``index`` (pycaffe's ``caffe.set_device(id)``)."""
    import jax
    devices = jax.devices()
    if not 0 <= index < len(devices):
        raise NetspecError(f"set_device({index}): there are {len(devices)} devices (0..{len(devices) - 1})")
    jax.config.update("jax_default_device", devices[index])


def set_random_seed(seed):
    """Seed netspec's host-side randomness (fillers of nets built afterwards use their own seed argument)."""
    import numpy as np
    np.random.seed(seed)


def set_compilation_cache(directory):
    """Keep compiled XLA executables in ``directory`` across runs (default: on, in
    ``$NETSPEC_CACHE_DIR`` or ``$XDG_CACHE_HOME/netspec``; see ``netspec.compilation``)."""
    from .compilation import enable_cache
    enable_cache(directory)


def _configure_from_environment():
    from .compilation import configure_from_environment
    configure_from_environment()


_configure_from_environment()
