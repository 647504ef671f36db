"""A Caffe net and its weights as an Orbax checkpoint for ``CaffeModule``.

``OUT/`` holds ``variables/``, an Orbax checkpoint (``ocp.StandardCheckpointer``) of
exactly the variables ``CaffeModule.init`` gives (``{"params": {layer: [blob, ...]},
"batch_stats": {layer: [blob, ...]}}`` when the net has BatchNorm layers), filled with the
net's weights, and ``net.prototxt``, the deploy net (TEST-phase layers, Input layers
declaring the exported shapes).  Nothing else is needed to run it::

    module, variables = load_orbax("model.orbax")
    y = module.apply(variables, x)          # {output blob: array}
"""
import os
import shutil

import numpy as np

from . import deploy_net_param, max_abs_difference, reference_outputs, require
from ..errors import NetspecError

PROTOTXT = "net.prototxt"
VARIABLES = "variables"


def _ocp():
    return require("orbax.checkpoint", "Orbax export")


def _abstract_variables(module, net_param):
    """The shapes and dtypes ``module.init`` gives, for the Input layers' declared shapes."""
    import jax
    from ..graph import build_graph
    from ..layers import TEST
    graph = build_graph(net_param, TEST)
    inputs = {name: jax.ShapeDtypeStruct(tuple(graph.blob_shapes[name]), np.float32) for name in graph.inputs}
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), inputs)


def module_variables(net, module, net_param):
    """``CaffeModule.init``'s variables for ``module``, holding ``net``'s weights (NumPy)."""
    abstract = _abstract_variables(module, net_param)
    trees = {"params": net.param_tree(), "batch_stats": net.state_tree()}
    variables = {}
    for collection, layers in abstract.items():
        if collection not in trees:
            raise NetspecError(f"Orbax export: CaffeModule has a variable collection {collection!r} "
                               "that netspec.Net does not")
        variables[collection] = {}
        for layer, blobs in layers.items():
            values = trees[collection].get(layer)
            if values is None or len(values) != len(blobs):
                raise NetspecError(f'Orbax export: layer "{layer}" has no {collection} in the net')
            variables[collection][layer] = [
                np.array(v, np.float32).reshape(b.shape) for v, b in zip(values, blobs)]
    return variables


def write(net, out_path, input_shapes):
    from ..flax_module import CaffeModule
    from ..prototxt import format_net
    ocp = _ocp()
    out_path = os.path.abspath(out_path)
    if os.path.isfile(out_path):
        raise NetspecError(f"{out_path}: is a file; Orbax writes a directory")
    net_param = deploy_net_param(net, input_shapes)
    module = CaffeModule(net_param)
    variables = module_variables(net, module, net_param)
    os.makedirs(out_path, exist_ok=True)
    target = os.path.join(out_path, VARIABLES)
    if os.path.exists(target):
        shutil.rmtree(target)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(target, variables)
        checkpointer.wait_until_finished()
    with open(os.path.join(out_path, PROTOTXT), "w") as f:
        f.write(format_net(net_param))
    count = sum(int(np.size(a)) for layers in variables.values() for blobs in layers.values() for a in blobs)
    return (f"Orbax checkpoint of CaffeModule variables ({', '.join(sorted(variables))}; {count} values) "
            f"with {PROTOTXT}")


def load_orbax(path):
    """``(CaffeModule, variables)`` from a directory written by ``write``: the module for
    the stored net, the variables restored from the checkpoint (NumPy arrays)."""
    from ..flax_module import CaffeModule
    from ..prototxt import read_net
    ocp = _ocp()
    path = os.path.abspath(str(path))
    prototxt, target = os.path.join(path, PROTOTXT), os.path.join(path, VARIABLES)
    if not os.path.isfile(prototxt) or not os.path.isdir(target):
        raise NetspecError(f"{path}: not a netspec Orbax export (needs {PROTOTXT} and {VARIABLES}/)")
    net_param = read_net(prototxt)
    module = CaffeModule(net_param)
    abstract = _abstract_variables(module, net_param)
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(target, abstract)
    return module, variables


def check(net, out_path, inputs):
    import jax
    expected = reference_outputs(net, inputs)
    module, variables = load_orbax(out_path)
    got = jax.jit(module.apply)(variables, inputs)
    return max_abs_difference(expected, {k: np.asarray(v) for k, v in got.items()})
