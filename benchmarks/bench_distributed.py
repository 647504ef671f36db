"""Images/s of multi-process data-parallel training (``netspec train --distributed``)
for 1, 2 and 4 processes on this machine, CPU (localhost, gloo collectives).

    python benchmarks/bench_distributed.py [--processes 1,2,4] [--iters 40] [--batch 32]

A small conv net (conv 5x5x16, ReLU, max pool, conv 5x5x32, ReLU, pool, InnerProduct 10,
softmax loss) on 3x32x32 images from a seeded Python data layer, global batch 32.  The
figure is process 0's logged iter/s over the last ``display`` window (after compiling),
times the global batch.

Caveat: the processes share this machine's cores.  On a 2-core machine, 2 or 4
processes cannot train faster than one process that already uses both cores (XLA's
CPU backend runs one process's convolutions on all cores); what the figures show
there is the cost of the collectives and of running P Python processes, not the
scaling.  Scaling shows with one process per accelerator or per host; on a GPU
machine run it with ``JAX_PLATFORMS=cuda`` and ``CUDA_VISIBLE_DEVICES`` per process
(``--gpu-per-process``).
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATA = '''
import numpy as np
import netspec


class Images(netspec.Layer):
    def setup(self, bottom, top):
        self.batch = int(self.param_str)
        self.random = np.random.RandomState(0)

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 3, 32, 32)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        label = self.random.randint(0, 10, self.batch)
        top[0].data[...] = self.random.randn(self.batch, 3, 32, 32) + label[:, None, None, None] * 0.1
        top[1].data[...] = label
'''

NET = '''name: "bench"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "bench_dist_data" layer: "Images" param_str: "%d" } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 16 kernel_size: 5 pad: 2 weight_filler { type: "xavier" } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "c2" type: "Convolution" bottom: "p1" top: "c2"
  convolution_param { num_output: 32 kernel_size: 5 pad: 2 weight_filler { type: "xavier" } } }
layer { name: "r2" type: "ReLU" bottom: "c2" top: "c2" }
layer { name: "p2" type: "Pooling" bottom: "c2" top: "p2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "p2" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''

SOLVER = '''net: "net.prototxt"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
max_iter: %d
display: %d
snapshot: 0
snapshot_after_train: false
random_seed: 1
'''


def run(processes, iters, batch, directory, gpu_per_process=False):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    base = [sys.executable, "-m", "netspec.cli", "train", "solver.prototxt"]
    if processes == 1:
        commands = [base]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        commands = [base + ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                            str(processes), "--process-id", str(i)] for i in range(processes)]
    procs = []
    for i, cmd in enumerate(commands):
        e = dict(env, CUDA_VISIBLE_DEVICES=str(i)) if gpu_per_process else env
        procs.append(subprocess.Popen(cmd, cwd=directory, env=e, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    logs = [p.communicate()[1] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{processes} processes failed:\n{logs[0][-2000:]}")
    rates = re.findall(r"Iteration \d+ \(([0-9.e+-]+) iter/s", logs[0])
    return float(rates[-1]) * batch


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--processes", default="1,2,4")
    a.add_argument("--iters", type=int, default=40)
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--gpu-per-process", action="store_true")
    args = a.parse_args()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "bench_dist_data.py"), "w") as f:
            f.write(DATA)
        with open(os.path.join(d, "net.prototxt"), "w") as f:
            f.write(NET % args.batch)
        with open(os.path.join(d, "solver.prototxt"), "w") as f:
            f.write(SOLVER % (args.iters, args.iters // 2))
        print(f"cores: {os.cpu_count()}, global batch {args.batch}, {args.iters} iterations")
        for p in (int(x) for x in args.processes.split(",")):
            print(f"{p} process{'es' if p > 1 else ''}: {run(p, args.iters, args.batch, d, args.gpu_per_process):.0f} images/s",
                  flush=True)


if __name__ == "__main__":
    main()
