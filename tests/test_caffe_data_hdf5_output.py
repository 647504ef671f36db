"""``HDF5Output`` inside a net: the write survives jit (ordered io_callback), in the
forward pass and in a solver step, with Caffe's dataset names and 4-D shapes."""
import h5py
import numpy as np

import netspec


def test_hdf5_output_writes_its_bottoms(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randn(6, 3).astype(np.float32)
    y = np.arange(6, dtype=np.float32)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["data"], f["label"] = x, y
    (tmp_path / "list.txt").write_text(f"{tmp_path}/in.h5\n")
    (tmp_path / "net.prototxt").write_text(f'''name: "h"
layer {{ name: "d" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 3 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "out" type: "HDF5Output" bottom: "ip" bottom: "label"
  hdf5_output_param {{ file_name: "{tmp_path}/out.h5" }} }}
''')
    net = netspec.Net(str(tmp_path / "net.prototxt"), netspec.TEST)
    net.forward()
    net.forward()
    ip = net.blobs["ip"].data
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["data"].shape == (3, 2, 1, 1) and f["label"].shape == (3, 1, 1, 1)
        np.testing.assert_allclose(f["data"][...].reshape(3, 2), ip, rtol=1e-6)
        np.testing.assert_array_equal(f["label"][...].ravel(), y[3:])


def test_hdf5_output_in_a_training_net(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["data"] = np.random.RandomState(1).randn(4, 3).astype(np.float32)
        f["label"] = np.array([0, 1, 0, 1], np.float32)
    (tmp_path / "list.txt").write_text(f"{tmp_path}/in.h5\n")
    (tmp_path / "net.prototxt").write_text(f'''name: "h"
layer {{ name: "d" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 2 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "out" type: "HDF5Output" bottom: "ip" bottom: "label"
  hdf5_output_param {{ file_name: "{tmp_path}/train.h5" }} }}
''')
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path}/net.prototxt"\nbase_lr: 0.1\n'
                                              'lr_policy: "fixed"\nmax_iter: 3\n')
    solver = netspec.get_solver(str(tmp_path / "solver.prototxt"))
    solver.step(3)
    with h5py.File(tmp_path / "train.h5", "r") as f:
        np.testing.assert_array_equal(f["label"][...].ravel(), [0, 1])
        assert f["data"].shape == (2, 2, 1, 1)
