"""FCN-8s forward and forward+backward: netspec (jitted) vs PyTorch eager.

Measures on this machine, at 1x3xSxS (default 500):
  * compile: seconds to lower and compile the jitted function (first call's extra cost),
  * forward: TEST-phase net to the ``score`` blob, median (and min) of --runs calls,
  * forward+backward: TRAIN-phase net with SoftmaxWithLoss (ignore_label 255,
    normalize: false) and the gradient of every learned blob (lr_mult != 0),
for netspec in each --dtype (bf16 computes in bfloat16 from float32 master weights)
and PyTorch eager (float32) when torch is importable.  netspec's convolutions run
as the layer library has them ("net": netspec.layers.conv_grad) or, for comparison,
as plain XLA convolutions ("xla"); see --conv-grad.  Everything is compiled first,
then the timed calls take turns (netspec, PyTorch, netspec, ...) so that on a shared
machine every implementation sees the same load.

--precision: matmul/convolution precision of the float32 rows.  "highest" is full
float32 (netspec's default, ``--precision fp32``; PyTorch with TF32 off, row "fp32"),
"tensorfloat32" (``--precision tf32``) lets both use TF32 tensor cores on a GPU
(PyTorch's cuDNN default; row "tf32").  On a CPU, netspec's tf32 computes 3x3
convolutions as Winograd F(4x4,3x3) (about 2e-5 relative; fp32 uses F(2x2,3x3), as
exact as a direct convolution) while PyTorch's CPU convolutions are the same in both.

  python benchmarks/bench_fcn8s.py                          # CPU, fp32, 3 runs
  python benchmarks/bench_fcn8s.py --parts step --runs 5 --precision highest,tensorfloat32
  python benchmarks/bench_fcn8s.py --device gpu --dtype fp32,bf16 \
      --precision highest,tensorfloat32 --runs 20 --json gpu.json
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from netspec import compiler  # noqa: E402
from netspec.layers import conv_grad, vision  # noqa: E402
from netspec.layers.base import TEST, TRAIN  # noqa: E402
from netspec.net import Net  # noqa: E402
from netspec.proto import caffe_pb2  # noqa: E402

DEPLOY = os.path.join(ROOT, "models", "voc-fcn8s", "deploy.prototxt")
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
# netspec matmul precision -> the PyTorch row computed the same way
PRECISIONS = {"highest": "fp32", "tensorfloat32": "tf32"}


# ---------------------------------------------------------------------------
# nets and data
# ---------------------------------------------------------------------------

def write_nets(size, workdir):
    """deploy (TEST) and train (TRAIN: + label input + loss) prototxts at size x size."""
    net = caffe_pb2.NetParameter()
    with open(DEPLOY) as f:
        text_format.Merge(f.read(), net)
    net.layer[0].input_param.shape[0].dim[:] = [1, 3, size, size]
    deploy = os.path.join(workdir, "deploy.prototxt")
    with open(deploy, "w") as f:
        f.write(text_format.MessageToString(net))
    label = net.layer.add()
    label.CopyFrom(net.layer[0])
    label.name, label.top[:] = "label", ["label"]
    label.input_param.shape[0].dim[:] = [1, 1, size, size]
    net.layer.insert(1, label)
    del net.layer[-1]
    loss = net.layer.add()
    loss.name, loss.type = "loss", "SoftmaxWithLoss"
    loss.bottom[:], loss.top[:] = ["score", "label"], ["loss"]
    loss.loss_param.ignore_label = 255
    loss.loss_param.normalize = False
    train = os.path.join(workdir, "train.prototxt")
    with open(train, "w") as f:
        f.write(text_format.MessageToString(net))
    return deploy, train


SOLVER = """train_net: "{train}"
base_lr: 1e-10
lr_policy: "fixed"
momentum: 0.99
weight_decay: 0.0005
max_iter: {max_iter}
display: {display}
snapshot: 0
"""

DATA_LAYER = '''
import numpy as np
import netspec


class FixedImage(netspec.Layer):
    """The benchmark's image and label, every pass."""

    def setup(self, bottom, top):
        size = int(self.param_str)
        rs = np.random.RandomState(1)
        self.data = (rs.standard_normal((1, 3, size, size)) * 50).astype(np.float32)
        self.label = rs.randint(0, 21, (1, 1, size, size)).astype(np.float32)
        self.label[rs.random_sample(self.label.shape) < 0.1] = 255

    def reshape(self, bottom, top):
        top[0].reshape(*self.data.shape)
        top[1].reshape(*self.label.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.data
        top[1].data[...] = self.label
'''


def write_solver_nets(size, workdir, train_iters):
    """voc-fcn8s's own train net with Input layers (for solver.step and the facade), the
    same net reading a Python data layer (for netspec train), and their solvers."""
    from netspec.prototxt import read_net, write_net
    net = read_net(os.path.join(ROOT, "models", "voc-fcn8s", "train.prototxt"))
    with_input = caffe_pb2.NetParameter()
    with_input.CopyFrom(net)
    data = with_input.layer[0]
    data.type = "Input"
    data.ClearField("python_param")
    data.input_param.shape.add().dim.extend([1, 3, size, size])
    data.input_param.shape.add().dim.extend([1, 1, size, size])
    net.layer[0].python_param.module = "bench_fixed_image"
    net.layer[0].python_param.layer = "FixedImage"
    net.layer[0].python_param.param_str = str(size)
    paths = {}
    for name, proto in (("step", with_input), ("train", net)):
        paths[name + "_net"] = os.path.join(workdir, f"{name}_net.prototxt")
        write_net(paths[name + "_net"], proto)
    paths["step"] = os.path.join(workdir, "step_solver.prototxt")
    with open(paths["step"], "w") as f:
        f.write(SOLVER.format(train=paths["step_net"], max_iter=10 ** 6, display=0))
    display = TRAIN_WINDOW
    windows = max(2, -(-train_iters // display))
    paths["train"] = os.path.join(workdir, "train_solver.prototxt")
    with open(paths["train"], "w") as f:
        f.write(SOLVER.format(train=paths["train_net"], max_iter=windows * display + 1, display=display))
    with open(os.path.join(workdir, "bench_fixed_image.py"), "w") as f:
        f.write(DATA_LAYER)
    return paths


def random_params(graph, seed=0):
    """He-scaled normal weights, small biases (the deploy net has no fillers)."""
    rs = np.random.RandomState(seed)
    params = {}
    for layer, shapes in graph.param_shapes.items():
        blobs = []
        for shape in shapes:
            if len(shape) > 1:
                fan_in = int(np.prod(shape[1:]))
                blobs.append((rs.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
            else:
                blobs.append((rs.standard_normal(shape) * 0.01).astype(np.float32))
        params[layer] = blobs
    return params


def make_inputs(size, seed=1):
    rs = np.random.RandomState(seed)
    data = (rs.standard_normal((1, 3, size, size)) * 50).astype(np.float32)
    label = rs.randint(0, 21, (1, 1, size, size)).astype(np.float32)
    label[rs.random_sample(label.shape) < 0.1] = 255
    return data, label


# ---------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------

def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def compile_jitted(fn, args):
    """(compile seconds, a no-argument call of the compiled function)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    return seconds, lambda: _block(compiled(*args))


def time_interleaved(measurements, runs):
    """Time each (row, key, call) ``runs`` times, taking turns so that every one sees
    the same machine load; store the median as row[key] and the minimum as row[key_min]."""
    for _, _, call in measurements:
        call()  # warm-up (the first call of a compiled function)
    times = [[] for _ in measurements]
    for _ in range(runs):
        for spent, (_, _, call) in zip(times, measurements):
            start = time.perf_counter()
            call()
            spent.append(time.perf_counter() - start)
    for spent, (row, key, _) in zip(times, measurements):
        row[key] = statistics.median(spent)
        row[key[:-2] + "_min_s"] = min(spent)


# ---------------------------------------------------------------------------
# netspec
# ---------------------------------------------------------------------------

class _PlainXlaConv:
    """``conv_grad`` as vision.py sees it, but computing plain XLA convolutions."""
    conv_general_dilated = staticmethod(jax.lax.conv_general_dilated)


def use_conv_variant(variant):
    vision.conv_grad = _PlainXlaConv() if variant == "xla" else conv_grad


def netspec_forward_fn(graph, dtype, precision):
    def run(params, inputs):
        cast = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
        inputs = {k: v.astype(dtype) for k, v in inputs.items()}
        blobs, _, _ = compiler.forward(graph, cast, {}, inputs, train=False, keep=("score",),
                                       precision=precision)
        return blobs["score"]
    return jax.jit(run)


def split_learned(graph, params):
    """({(layer, i): learned blob}, {(layer, i): fixed blob}) by lr_mult."""
    mults = graph.lr_mults
    learned, fixed = {}, {}
    for layer, blobs in params.items():
        for i, blob in enumerate(blobs):
            (learned if mults.get((layer, i), 1) != 0 else fixed)[(layer, i)] = blob
    return learned, fixed


def netspec_grad_fn(graph, dtype, precision):
    def objective(learned, fixed, inputs, rng):
        merged = {**learned, **fixed}
        params = {}
        for (layer, i) in sorted(merged, key=lambda k: k[1]):
            params.setdefault(layer, []).append(merged[(layer, i)].astype(dtype))
        data = {"data": inputs["data"].astype(dtype), "label": inputs["label"]}
        _, loss, _ = compiler.forward(graph, params, {}, data, train=True, rng=rng, keep=(),
                                      precision=precision)
        return loss

    return jax.jit(jax.value_and_grad(objective))


def prepare_netspec(graphs, device_args, dtype_name, variant, precision):
    """Compile netspec's forward and forward+backward; returns (row, {key: call}, score)."""
    use_conv_variant(variant)
    test_graph, train_graph = graphs
    params, learned, fixed, fwd_inputs, train_inputs = device_args
    dtype = DTYPES[dtype_name]
    row = {"impl": "netspec", "dtype": dtype_name, "precision": precision, "conv_grad": variant}
    with jax.default_matmul_precision(precision):  # the backward pass is traced here too
        row["compile_fwd_s"], forward = compile_jitted(
            netspec_forward_fn(test_graph, dtype, precision), (params, fwd_inputs))
        row["compile_fwdbwd_s"], forward_backward = compile_jitted(
            netspec_grad_fn(train_graph, dtype, precision),
            (learned, fixed, train_inputs, jax.random.PRNGKey(0)))
    use_conv_variant("net")
    score = np.asarray(forward(), np.float32)
    return row, {"fwd_s": forward, "fwdbwd_s": forward_backward}, score


def netspec_setup(deploy, train, size, device):
    """Both graphs, and params and inputs on the device (shared by every variant)."""
    test_graph = Net(deploy, phase=TEST).graph
    train_graph = Net(train, phase=TRAIN).graph
    params = random_params(test_graph)
    data, label = make_inputs(size)
    learned, fixed = split_learned(train_graph, params)
    put = lambda tree: jax.device_put(tree, device)
    device_args = (put(params), put(learned), put(fixed), put({"data": data}),
                   put({"data": data, "label": label}))
    return (test_graph, train_graph), params, device_args


def prepare_netspec_step(paths, params, size, precision_name):
    """``solver.step(1)`` and ``net.forward(); net.backward()`` on voc-fcn8s's train net with
    the benchmark's weights; returns (row, {key: call})."""
    from netspec import TRAIN as NET_TRAIN
    from netspec.compilation import TOTALS
    from netspec.log import Log
    from netspec.solver import Solver
    quiet = Log(open(os.devnull, "w"))
    data, label = make_inputs(size)
    host_params = {k: [np.asarray(b) for b in v] for k, v in params.items()}
    solver = Solver(paths["step"], log=quiet, precision=precision_name)
    solver.net.set_param_tree(host_params)

    def step():
        solver.net.blobs["data"].data[...] = data
        solver.net.blobs["label"].data[...] = label
        solver.step(1)

    before = TOTALS.snapshot()
    step()
    compile_step = TOTALS.seconds - before[1]
    # exact shapes, as the jitted forward+backward row runs: the +5% comparison is like for like
    net = Net(paths["step_net"], phase=NET_TRAIN, log=quiet, precision=precision_name, buckets="off")
    net.set_param_tree(host_params)

    def facade():
        net.blobs["data"].data[...] = data
        net.blobs["label"].data[...] = label
        net.forward()
        net.backward()
        jax.block_until_ready([b._diff_device for blobs in net.params.values() for b in blobs
                               if b._diff_device is not None])
        net.clear_param_diffs()

    before = TOTALS.snapshot()
    facade()
    compile_facade = TOTALS.seconds - before[1]
    row = {"impl": "netspec", "dtype": precision_name, "precision": "-", "conv_grad": "net",
           "what": "solver.step(1) and net.forward()+backward()",
           "compile_step_s": compile_step, "compile_facade_s": compile_facade}
    return row, {"step_s": step, "facade_s": facade}


# iterations per display window of the `netspec train` measurement
TRAIN_WINDOW = 3


def netspec_train_rate(paths, workdir, precision_name):
    """Iterations per second of ``netspec train`` from its own log: the median of its display
    windows after the first (which holds the compile).  One window alone swung by 1.3x on
    the 2-core machine, as single ``solver.step`` calls do."""
    import re
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([workdir, ROOT, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "netspec.cli", "train", paths["train"], "--precision",
                          precision_name], cwd=workdir, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    rates = [float(r) for r in re.findall(r"Iteration \d+ \(([\d.e+-]+) iter/s", out.stderr)]
    return statistics.median(rates[1:])


# ---------------------------------------------------------------------------
# PyTorch eager
# ---------------------------------------------------------------------------

def _torch_tf32(torch, allow):
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cuda.matmul.allow_tf32 = allow


def prepare_torch(params, size, on_gpu, kind="fp32"):
    """PyTorch eager forward and forward+backward calls; returns (row, {key: call}, score).
    ``kind``: "fp32" (TF32 off), "tf32" (TF32 on, cuDNN's default; GPU only) or "bf16"
    (``torch.autocast`` to bfloat16, PyTorch's mixed precision: float32 weights and
    optimizer, bfloat16 convolutions and matmuls)."""
    import contextlib
    import torch
    import torch_fcn8s
    device = "cuda" if on_gpu else "cpu"
    p = torch_fcn8s.params_from_tree(params)
    p = {k: [t.detach().to(device).requires_grad_(t.requires_grad) for t in v]
         for k, v in p.items()}
    data, label = make_inputs(size)
    x, y = torch.tensor(data, device=device), torch.tensor(label[:, 0], device=device)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    learned = [t for v in p.values() for t in v if t.requires_grad]

    def mixed():
        return torch.autocast(device, dtype=torch.bfloat16) if kind == "bf16" else contextlib.nullcontext()

    def forward():
        _torch_tf32(torch, kind == "tf32")  # set per call: the rows take turns
        with torch.no_grad(), mixed():
            out = torch_fcn8s.forward(p, x).float()
        sync()
        return out

    def forward_backward():
        _torch_tf32(torch, kind == "tf32")
        with mixed():
            loss = torch_fcn8s.loss(p, x, y)
        grads = torch.autograd.grad(loss, learned)
        sync()
        return grads

    # the full step: torch.optim.SGD as FCN's solver (momentum 0.99, weight decay 5e-4 on
    # weights, biases at twice the rate and no decay, as voc-fcn8s's param specs say)
    weights = [t for v in p.values() for t in v[:1] if t.requires_grad]
    biases = [t for v in p.values() for t in v[1:] if t.requires_grad]
    optimizer = torch.optim.SGD([{"params": weights, "lr": 1e-10, "weight_decay": 5e-4},
                                 {"params": biases, "lr": 2e-10, "weight_decay": 0.0}],
                                lr=1e-10, momentum=0.99)

    def step():
        _torch_tf32(torch, kind == "tf32")
        optimizer.zero_grad(set_to_none=True)
        with mixed():
            loss = torch_fcn8s.loss(p, x, y)
        loss.backward()
        optimizer.step()
        sync()

    row = {"impl": "pytorch-eager", "dtype": kind, "precision": "-", "conv_grad": "-",
           "threads": torch.get_num_threads(), "version": torch.__version__}
    calls = {"fwd_s": forward, "fwdbwd_s": forward_backward, "step_s": step}
    return row, calls, forward().cpu().numpy()


TORCH_WORKER = r"""
import sys, time
import numpy as np
sys.path.insert(0, {bench_dir!r})
import bench_fcn8s
tree = dict(np.load({params!r}, allow_pickle=True))
params = {{k: list(v) for k, v in tree.items()}}
row, calls, score = bench_fcn8s.prepare_torch(params, {size!r}, {on_gpu!r}, {kind!r})
np.save({score!r}, score)
print("READY", flush=True)
for line in sys.stdin:
    calls[line.strip()]()
    print("DONE", flush=True)
"""


def prepare_torch_process(params, size, on_gpu, kind, workdir):
    """prepare_torch in a separate process that never imports netspec (so PyTorch runs with
    the allocator settings it has for its users); the calls are relayed over a pipe."""
    import subprocess
    arrays = {}
    for layer, blobs in params.items():
        arrays[layer] = np.empty(len(blobs), dtype=object)
        for i, b in enumerate(blobs):
            arrays[layer][i] = np.asarray(b)
    npz = os.path.join(workdir, "torch_params.npz")
    np.savez(npz, **arrays)
    score_path = os.path.join(workdir, "torch_score.npy")
    code = TORCH_WORKER.format(bench_dir=os.path.dirname(os.path.abspath(__file__)), params=npz, size=size,
                               on_gpu=on_gpu, kind=kind, score=score_path)
    worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    if worker.stdout.readline().strip() != "READY":
        raise RuntimeError("the PyTorch worker did not start")

    def relay(key):
        def call():
            worker.stdin.write(key + "\n")
            worker.stdin.flush()
            assert worker.stdout.readline().strip() == "DONE"
        return call
    import torch
    row = {"impl": "pytorch-eager", "dtype": kind, "precision": "-", "conv_grad": "-",
           "threads": torch.get_num_threads(), "version": torch.__version__, "process": "separate"}
    return row, {key: relay(key) for key in ("fwd_s", "fwdbwd_s", "step_s")}, np.load(score_path)


def torch_available(on_gpu):
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() if on_gpu else True


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def machine_info(device):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "jax": jax.__version__,
            "jax_device": str(device), "python": platform.python_version()}


def _fmt(value):
    return "-" if value is None else f"{value:.3f}"


def print_table(rows):
    keys = ["step_s", "step_min_s", "facade_s", "train_iter_s", "fwd_s", "fwdbwd_s", "compile_fwdbwd_s",
            "compile_step_s"]
    print(f"{'impl':<14}{'dtype':<6}{'precision':<14}{'conv':<6}"
          + "".join(f"{k:>17}" for k in keys))
    for r in rows:
        print(f"{r['impl']:<14}{r['dtype']:<6}{r['precision']:<14}{r['conv_grad']:<6}"
              + "".join(f"{_fmt(r.get(k)):>17}" for k in keys))
    peers = {r["dtype"]: r for r in rows if r["impl"] == "pytorch-eager"}
    for r in rows:
        peer = peers.get(PRECISIONS.get(r["precision"], r["dtype"]))
        if r["impl"] != "netspec" or not peer:
            continue
        for key, what in (("step_s", "training step"), ("facade_s", "forward()+backward() vs its fwd+bwd"),
                          ("train_iter_s", "netspec train iteration"), ("fwd_s", "forward"),
                          ("fwdbwd_s", "forward+backward")):
            if r.get(key) and peer.get("step_s" if key in ("train_iter_s", "facade_s") else key):
                theirs = peer["step_s" if key in ("train_iter_s", "facade_s") else key]
                print(f"netspec {r['dtype']}/{r['precision']} {what}: {r[key]:.3f} s; PyTorch eager "
                      f"{peer['dtype']}: {theirs:.3f} s -> netspec/PyTorch = {r[key] / theirs:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--dtype", default="fp32", help="comma list of fp32, bf16")
    ap.add_argument("--runs", type=int, default=3, help="timed calls per measurement (median)")
    ap.add_argument("--size", type=int, default=500, help="input height and width")
    ap.add_argument("--conv-grad", default="net",
                    help="comma list of net (the layer library as is: conv_grad's GEMMs), xla "
                         "(plain XLA convolutions, for comparison); default: net")
    ap.add_argument("--precision", default="highest",
                    help="comma list of highest (full float32; PyTorch row fp32, TF32 off), "
                         "tensorfloat32 (TF32 on GPUs; PyTorch row tf32); bf16 rows use the "
                         "first; default: highest")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if importable")
    ap.add_argument("--parts", default="step,facade,train,fwd",
                    help="comma list: step (solver.step(1)), facade (net.forward()+backward()), "
                         "train (netspec train iter/s), fwd (jitted forward and forward+backward)")
    ap.add_argument("--train-iters", type=int, default=12,
                    help="netspec train iterations after the compile (windows of %d)" % TRAIN_WINDOW)
    ap.add_argument("--torch-process", default="separate",
                    help="comma list: separate (PyTorch in its own process, as its users run it: "
                         "the default), same (in this process, sharing netspec's allocator settings)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    jax.config.update("jax_default_matmul_precision", "highest")
    device = jax.devices(args.device)[0]
    on_gpu = args.device == "gpu"
    variants = args.conv_grad.split(",")
    dtypes = args.dtype.split(",")
    precisions = args.precision.split(",")
    for name in dtypes:
        if name not in DTYPES:
            ap.error(f"--dtype {name}: use fp32 or bf16")
    for name in variants:
        if name not in ("net", "xla"):
            ap.error(f"--conv-grad {name}: use net or xla")
    for name in precisions:
        if name not in PRECISIONS:
            ap.error(f"--precision {name}: use highest or tensorfloat32")
    if not on_gpu and "tensorfloat32" in precisions:
        print("note: on a CPU, netspec's tf32 rows use Winograd F(4x4,3x3) convolutions "
              "(float32 data, ~2e-5 relative); PyTorch's CPU rows are plain float32")

    parts = set(args.parts.split(","))
    info = machine_info(device)
    print(json.dumps(info))
    rows, measurements, scores = [], [], {}
    workdir = tempfile.mkdtemp()
    deploy, train = write_nets(args.size, workdir)
    graphs, params, device_args = netspec_setup(deploy, train, args.size, device)
    paths = write_solver_nets(args.size, workdir, args.train_iters)
    for dtype_name in dtypes:
        for precision in (precisions if dtype_name == "fp32" else precisions[:1]):
            name = "bf16" if dtype_name == "bf16" else PRECISIONS[precision]
            if parts & {"step", "facade"}:
                row, calls = prepare_netspec_step(paths, params, args.size, name)
                rows.append(row)
                measurements += [(row, key, call) for key, call in calls.items() if key[:-2] in parts]
                if on_gpu:
                    row["peak_gpu_bytes"] = device.memory_stats().get("peak_bytes_in_use")
                if "train" in parts:
                    row["train_iter_s"] = 1.0 / netspec_train_rate(paths, workdir, name)
                print(json.dumps(row), flush=True)
            if "fwd" not in parts:
                continue
            for variant in variants:
                row, calls, score = prepare_netspec(graphs, device_args, dtype_name, variant,
                                                    precision)
                rows.append(row)
                measurements += [(row, key, call) for key, call in calls.items()]
                if dtype_name == "fp32":
                    scores.setdefault(PRECISIONS[precision], score)
                print(json.dumps(row), flush=True)
    if not args.no_torch and torch_available(on_gpu):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        labels = sorted({PRECISIONS[p] for p in precisions}) if on_gpu else ["fp32"]
        if "bf16" in dtypes:
            labels = (labels if "fp32" in dtypes else []) + ["bf16"]
        for label, where in [(label, where) for label in labels for where in args.torch_process.split(",")]:
            if where == "separate":
                row, calls, torch_score = prepare_torch_process(params, args.size, on_gpu, label, workdir)
            else:
                row, calls, torch_score = prepare_torch(params, args.size, on_gpu, label)
                row["process"] = "same"
            if label in scores:
                row["score_max_abs_diff"] = float(np.abs(scores[label] - torch_score).max())
                row["score_max_abs"] = float(np.abs(torch_score).max())
            rows.append(row)
            wanted = {"fwd_s", "fwdbwd_s"} if "fwd" in parts else set()
            wanted |= {"step_s"} if parts & {"step", "facade", "train"} else set()
            measurements += [(row, key, call) for key, call in calls.items() if key in wanted]
    time_interleaved(measurements, args.runs)
    for row in rows:
        print(json.dumps(row), flush=True)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "size": args.size, "runs": args.runs, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
