"""Time writing and reading a VGG16-sized .caffemodel (138,357,544 float32 parameters).

Usage: python benchmarks/bench_caffemodel_io.py [--dir DIR] [--no-stock]

Writes a synthetic net with VGG16's 13 conv + 3 fc blob shapes via
``write_caffemodel``, reads it back in a fresh subprocess via
``read_caffemodel`` and reports seconds and the reader's peak RSS (absolute
and above the interpreter-plus-imports baseline) against the file size.  With
the stock protobuf path (``ParseFromString`` + ``np.asarray`` per blob) for
comparison unless ``--no-stock``.  The file is deleted afterwards.

Writer and readers each run in their own process, started from this small
one: Linux keeps ``ru_maxrss`` across fork+exec, so a reader started from a
process holding the weights would inherit that process's peak.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VGG16_CONVS = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
               ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
               ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
               ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)]
VGG16_FCS = [("fc6", 25088, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]
VGG16_PARAMS = 138_357_544

CHILD_WRITE = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
sys.path.insert(0, {bench_dir!r})
import numpy as np
from bench_caffemodel_io import v1_deploy_and_net, vgg16_net_and_weights
from netspec.caffemodel import write_caffemodel
net, weights = vgg16_net_and_weights()
if {v1!r}:   # VGG16's own formats: V1 caffemodel and V1 deploy prototxt
    deploy, net = v1_deploy_and_net(net)
    with open({deploy!r}, "w") as f:
        f.write(deploy)
t, c = time.perf_counter(), time.process_time()
write_caffemodel({path!r}, net, weights)
seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - c
sums = {{name: [float(a.sum(dtype=np.float64)) for a in arrays] for name, arrays in weights.items()}}
# Floor: the same bytes written with plain f.write + fsync, no protobuf framing, no rename.
t = time.perf_counter()
with open({path!r} + ".raw", "wb") as f:
    for arrays in weights.values():
        for a in arrays:
            f.write(a)
    f.flush()
    os.fsync(f.fileno())
raw_seconds = time.perf_counter() - t
os.remove({path!r} + ".raw")
print(json.dumps(dict(seconds=seconds, cpu_seconds=cpu_seconds, raw_seconds=raw_seconds, sums=sums,
                      numpy=np.__version__)))
"""

CHILD_FAST = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from netspec.caffemodel import read_caffemodel
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t, c = time.perf_counter(), time.process_time()
net, weights = read_caffemodel({path!r})
seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - c
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sums = {{name: [float(a.sum(dtype=np.float64)) for a in arrays] for name, arrays in weights.items()}}
print(json.dumps(dict(seconds=seconds, cpu_seconds=cpu_seconds, base_kb=base, peak_kb=peak, sums=sums)))
"""

CHILD_STOCK = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from netspec.proto import caffe_pb2
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t, c = time.perf_counter(), time.process_time()
with open({path!r}, 'rb') as f:
    net = caffe_pb2.NetParameter.FromString(f.read())
parsed = time.perf_counter() - t
weights = {{layer.name: [np.asarray(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in layer.blobs]
           for layer in net.layer}}
seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - c
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(seconds=seconds, cpu_seconds=cpu_seconds, parse_seconds=parsed, base_kb=base, peak_kb=peak)))
"""


CHILD_NET = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import numpy as np
import netspec
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t, c = time.perf_counter(), time.process_time()
net = netspec.Net({deploy!r}, {path!r}, netspec.TEST)
seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - c
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sums = {{name: [float(b.data.sum(dtype=np.float64)) for b in blobs] for name, blobs in net.params.items()}}
print(json.dumps(dict(seconds=seconds, cpu_seconds=cpu_seconds, base_kb=base, peak_kb=peak, sums=sums)))
"""

V1_TYPES = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "InnerProduct": "INNER_PRODUCT"}
# (the V1 net gets VGG16's five max poolings, which carry no weights)


def v1_deploy_and_net(net):
    """VGG16's real file formats: a V1 deploy prototxt (``input:``/``input_dim``, ``layers``
    with enum types) and the same layers as a V1 NetParameter for a V1 caffemodel."""
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    V1 = caffe_pb2.V1LayerParameter
    v1 = caffe_pb2.NetParameter(name=net.name)
    top = "data"
    for layer in net.layer:
        old = v1.layers.add(name=layer.name, bottom=[top] if layer.type != "ReLU" else layer.bottom,
                            top=layer.top)
        old.type = V1.LayerType.Value(V1_TYPES[layer.type])
        if layer.type == "Convolution":
            old.convolution_param.CopyFrom(layer.convolution_param)
        elif layer.type == "InnerProduct":
            old.inner_product_param.CopyFrom(layer.inner_product_param)
        top = layer.top[0]
        if layer.type == "ReLU" and layer.name in ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"):
            pool = v1.layers.add(name="pool" + layer.name[4], type=V1.POOLING, bottom=[top],
                                 top=["pool" + layer.name[4]])
            pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
            pool.pooling_param.kernel_size, pool.pooling_param.stride = 2, 2
            top = pool.top[0]
    deploy = caffe_pb2.NetParameter()
    deploy.CopyFrom(v1)
    deploy.input.append("data")
    deploy.input_dim.extend([1, 3, 224, 224])
    return text_format.MessageToString(deploy), v1


def vgg16_net_and_weights(seed=0):
    """A VGG16-shaped V2 net (conv/ReLU/fc layers) and random float32 weights."""
    import numpy as np
    from netspec.proto import caffe_pb2
    rng = np.random.default_rng(seed)
    net = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers")
    weights = {}
    bottom = "data"
    for name, cin, cout in VGG16_CONVS:
        conv = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
        conv.convolution_param.num_output = cout
        conv.convolution_param.kernel_size.append(3)
        conv.convolution_param.pad.append(1)
        net.layer.add(name="relu" + name[4:], type="ReLU", bottom=[name], top=[name])
        weights[name] = [rng.random((cout, cin, 3, 3), np.float32), rng.random(cout, np.float32)]
        bottom = name
    for name, cin, cout in VGG16_FCS:
        fc = net.layer.add(name=name, type="InnerProduct", bottom=[bottom], top=[name])
        fc.inner_product_param.num_output = cout
        weights[name] = [rng.random((cout, cin), np.float32), rng.random(cout, np.float32)]
        bottom = name
    count = sum(a.size for arrays in weights.values() for a in arrays)
    assert count == VGG16_PARAMS, count
    return net, weights


def run_child(template, path, v1=False, deploy=""):
    code = template.format(repo=REPO, path=path, bench_dir=os.path.dirname(os.path.abspath(__file__)),
                           v1=v1, deploy=deploy)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to put the temporary file")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock protobuf comparison")
    args = parser.parse_args()

    path = os.path.join(args.dir, f"bench_vgg16_{os.getpid()}.caffemodel")
    try:
        written = run_child(CHILD_WRITE, path)
        size = os.path.getsize(path)
        fast = run_child(CHILD_FAST, path)
        for name, sums in written["sums"].items():      # the reader saw what was written
            for got, want in zip(fast["sums"][name], sums):
                assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (name, got, want)
        stock = None if args.no_stock else run_child(CHILD_STOCK, path)
        # Net(deploy, weights) on VGG16's own formats: V1 prototxt and V1 caffemodel
        v1_path, deploy = path + ".v1.caffemodel", path + ".deploy.prototxt"
        run_child(CHILD_WRITE, v1_path, v1=True, deploy=deploy)
        v1_size = os.path.getsize(v1_path)
        built = run_child(CHILD_NET, v1_path, deploy=deploy)
        for name, sums in written["sums"].items():      # the net holds what was written
            for got, want in zip(built["sums"][name], sums):
                assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (name, got, want)
    finally:
        for leftover in (path, path + ".v1.caffemodel", path + ".deploy.prototxt"):
            if os.path.exists(leftover):
                os.remove(leftover)

    mb = 1e6
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
          f"numpy {written['numpy']}, load average {os.getloadavg()[0]:.1f}")
    print(f"file: {size / mb:.1f} MB, {VGG16_PARAMS:,} float32 parameters (VGG16 blob shapes)")
    print(f"write_caffemodel: {written['seconds']:.2f} s wall, {written['cpu_seconds']:.2f} s CPU (including fsync); "
          f"plain f.write + fsync of the same arrays: {written['raw_seconds']:.2f} s")

    def report(label, result):
        peak, extra = result["peak_kb"] * 1024, (result["peak_kb"] - result["base_kb"]) * 1024
        print(f"{label}: {result['seconds']:.2f} s wall, {result['cpu_seconds']:.2f} s CPU, peak RSS {peak / mb:.0f} MB absolute, "
              f"{extra / mb:.0f} MB above the {result['base_kb'] * 1024 / mb:.0f} MB baseline "
              f"= {extra / size:.2f}x file size")
    report("read_caffemodel (fresh process)", fast)
    size, v2_size = v1_size, size
    report("Net(V1 deploy prototxt, V1 caffemodel) (fresh process, after import netspec)", built)
    size = v2_size
    if stock:
        report("stock protobuf ParseFromString + np.asarray (fresh process)", stock)
        print(f"  of which ParseFromString: {stock['parse_seconds']:.2f} s")


if __name__ == "__main__":
    main()
