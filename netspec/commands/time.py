"""``netspec time --model M [--iterations N] [--phase TRAIN]`` (``caffe time``).

Times the whole jitted forward and forward+backward, and each layer on its own
(its forward, and its backward as a VJP) so the costly layers stand out.  Layers
run fused inside the whole-net executable, so the per-layer sum differs from the
whole-net figure.
"""
import time

import jax
import jax.numpy as jnp

from .. import compiler
from ..errors import NetspecError
from ..layers import LayerContext
from . import add_execution_arguments, execution_options


def add_arguments(p):
    p.add_argument("--model", required=True, help="the net prototxt")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN")
    p.add_argument("--python-path", action="append", default=[])
    p.add_argument("--gpu", help="device id to run on")
    add_execution_arguments(p)


def _timed(fn, iterations):
    jax.block_until_ready(fn())          # compile and warm up
    start = time.perf_counter()
    for _ in range(iterations):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / iterations * 1e3


def run(args):
    from .. import Net, TEST, TRAIN, set_device
    from ..solver import Log
    if args.gpu:
        set_device(int(args.gpu.split(",")[0]))
    if args.iterations < 1:
        raise NetspecError("time: --iterations must be >= 1")
    log = Log()
    net = Net(args.model, phase=TRAIN if args.phase == "TRAIN" else TEST, python_path=args.python_path,
              log=log, **execution_options(args))
    inputs = net.next_inputs()
    net.reshape()
    graph, train = net.graph, args.phase == "TRAIN"
    params, state = net.param_tree(), net.state_tree()
    rng = jax.random.PRNGKey(0)
    # the whole net runs as users run it: in its size bucket's executable (netspec.buckets)
    plan = net.plan()
    padded_inputs = {k: jnp.asarray(v) for k, v in plan.pad_inputs(inputs).items()}

    def run_net(p):
        return compiler.forward(plan.graph, p, state, padded_inputs, train=train, rng=rng,
                                extents=plan.unpack_extents(plan.extents),
                                **compiler.precision_options(args.precision))

    forward = jax.jit(lambda p: run_net(p)[0])
    backward = jax.jit(jax.grad(lambda p: run_net(p)[1]))
    blobs = {name: plan.crop(name, value) for name, value in forward(params).items()}
    log(f"Performing Forward and Backward {args.iterations} times")
    for node in graph.nodes:
        if node.is_input:
            continue
        impl = node.impl
        layer_params = [jnp.asarray(params[o][i]) for o, i in node.param_keys]
        cl = impl.channels_last
        bottoms = [jnp.moveaxis(blobs[b], 1, -1) if cl and blobs[b].ndim >= 3 else blobs[b]
                   for b in node.bottoms]

        def layer_forward(p, b, impl=impl, name=node.name):
            return impl.forward(LayerContext(train, rng, state.get(name, ())), p, b)
        f = jax.jit(layer_forward)
        fwd_ms = _timed(lambda: f(layer_params, bottoms), args.iterations)
        float_bottoms = all(jnp.issubdtype(b.dtype, jnp.floating) for b in bottoms)
        if float_bottoms and (bottoms or layer_params):
            def objective(p, b, f=layer_forward):
                return sum(jnp.sum(t.astype(jnp.float32)) for t in f(p, b))
            g = jax.jit(jax.grad(objective, argnums=(0, 1)))
            bwd_ms = _timed(lambda: g(layer_params, bottoms), args.iterations)
        else:
            bwd_ms = 0.0
        log(f"{node.name:>16}\tforward: {fwd_ms:.4g} ms.")
        log(f"{node.name:>16}\tbackward: {bwd_ms:.4g} ms.")
    fwd = _timed(lambda: forward(params), args.iterations)
    bwd = _timed(lambda: backward(params), args.iterations)
    log(f"Average Forward pass: {fwd:.4g} ms.")
    log(f"Average Forward-Backward: {bwd:.4g} ms.")
    log(f"Device: {jax.devices()[0]}")
    return 0
