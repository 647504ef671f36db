"""Data-parallel training on 4 forced CPU devices matches single-device training
on the same global batch (8 split 4 ways).  Runs in a subprocess because the device
count must be set before JAX is imported."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

DATA_MODULE = '''
import ast
import numpy as np
import netspec


class Fixed(netspec.Layer):
    """Batches from a seeded generator, the same sequence in every net instance."""

    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        self.batch = params["batch"]
        self.random = np.random.RandomState(params["seed"])

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 2, 3, 3)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        label = self.random.randint(0, 3, self.batch)
        top[0].data[...] = self.random.randn(self.batch, 2, 3, 3) + label[:, None, None, None]
        top[1].data[...] = label
'''

NET = '''name: "parallel"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "multidevice_test_data" layer: "Fixed" param_str: "{'batch': 8, 'seed': 4}" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 2 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''

SOLVER = '''net: "net.prototxt"
base_lr: 0.1
momentum: 0.9
weight_decay: 0.001
lr_policy: "step"
gamma: 0.5
stepsize: 2
max_iter: 4
display: 1
random_seed: 2
snapshot_prefix: "cli/run"
'''

SCRIPT = '''
import json, sys
import jax
import numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from netspec import cli
from netspec.caffemodel import load_weights
from netspec.solver import Solver

def weights(net):
    return {name: [np.array(b.data) for b in blobs] for name, blobs in net.params.items()}

devices = jax.devices()
single = Solver("solver.prototxt")
initial = weights(single.net)
single.step(4)
parallel = Solver("solver.prototxt", devices=devices)
parallel.step(4)
sharded = [len(leaf.sharding.device_set) for leaf in jax.tree.leaves(parallel._opt_state)]
code = cli.main(["train", "--solver", "solver.prototxt", "--gpu", "all"])
arrays = {}
for tag, found in (("initial", initial), ("single", weights(single.net)), ("parallel", weights(parallel.net)),
                   ("cli", load_weights("cli/run_iter_4.caffemodel"))):
    for name, blobs in found.items():
        for i, a in enumerate(blobs):
            arrays[f"{tag}/{name}/{i}"] = a
np.savez("result.npz", **arrays)
print(json.dumps({"devices": len(devices), "platform": devices[0].platform, "cli_exit": code,
                  "state_devices": sorted(set(sharded)),
                  "losses": [single.smoothed_loss, parallel.smoothed_loss]}))
'''


def test_four_cpu_devices_match_one(tmp_path):
    (tmp_path / "multidevice_test_data.py").write_text(DATA_MODULE)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["platform"] == "cpu"
    assert report["cli_exit"] == 0
    assert report["state_devices"] == [4]        # the parallel solver's state lives on all 4 devices
    assert np.isclose(report["losses"][0], report["losses"][1], rtol=1e-5)
    assert "Iteration 3" in done.stderr          # the CLI run logged its iterations

    result = np.load(tmp_path / "result.npz")
    names = sorted(k.split("/", 1)[1] for k in result.files if k.startswith("single/"))
    assert names == ["conv/0", "conv/1", "ip/0", "ip/1"]
    for name in names:
        single = result[f"single/{name}"]
        np.testing.assert_allclose(result[f"parallel/{name}"], single, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(result[f"cli/{name}"], single, rtol=1e-5, atol=1e-7)
        assert not np.allclose(single, result[f"initial/{name}"]), name   # training moved it
