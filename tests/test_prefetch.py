"""Host data layers run ahead on a thread (netspec.prefetch): same sample order as without
the thread, a bounded lead, and a data layer's error raised where the batch is taken,
naming the layer and the file and line."""
import sys
import textwrap

import numpy as np
import pytest

import netspec
from netspec.errors import NetspecError
from netspec.prefetch import HostDataLayers

COUNTER_MODULE = textwrap.dedent('''
    import numpy as np
    import netspec

    CALLS = []


    class Counter(netspec.Layer):
        """Batch i holds i in every cell; its height grows with i (shapes change per pass);
        raises on the batch numbered by param_str's fail_at."""

        def setup(self, bottom, top):
            self.i = 0
            self.fail_at = eval(self.param_str or "{}").get("fail_at")

        def reshape(self, bottom, top):
            top[0].reshape(1, 1, 4 + self.i % 3, 5)

        def forward(self, bottom, top):
            CALLS.append(self.i)
            if self.i == self.fail_at:
                raise ValueError("bad record %d" % self.i)
            top[0].data[...] = self.i
            self.i += 1
''')

NET = '''name: "counting"
layer { name: "source" type: "Python" top: "data"
  python_param { module: "prefetch_counter" layer: "Counter" param_str: "PARAMS" } }
layer { name: "double" type: "Power" bottom: "data" top: "twice" power_param { scale: 2 } }
'''


@pytest.fixture
def net_file(tmp_path, monkeypatch):
    (tmp_path / "prefetch_counter.py").write_text(COUNTER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("prefetch_counter", None)

    def write(params="{}"):
        path = tmp_path / "net.prototxt"
        path.write_text(NET.replace("PARAMS", params.replace('"', '\\"')))
        return str(path)
    yield write
    sys.modules.pop("prefetch_counter", None)


def values_seen(net, passes):
    seen = []
    for _ in range(passes):
        out = net.forward()
        data = net.blobs["data"].data
        assert np.all(data == data.flat[0])
        np.testing.assert_array_equal(out["twice"], 2 * data)
        seen.append((int(data.flat[0]), data.shape))
    return seen


def test_prefetched_batches_come_in_the_order_and_shapes_of_direct_runs(net_file):
    path = net_file()
    direct = values_seen(netspec.Net(path, phase=netspec.TRAIN, buckets="off"), 7)
    ahead = netspec.Net(path, phase=netspec.TRAIN, buckets="off", prefetch=True)
    assert values_seen(ahead, 7) == direct
    assert [v for v, _ in direct] == list(range(7))
    # stopping the thread keeps the batches it made ahead: the order goes on unchanged
    ahead.close()
    assert values_seen(ahead, 3) == [(v, (1, 1, 4 + v % 3, 5)) for v in range(7, 10)]


def test_the_thread_runs_at_most_its_queue_ahead(net_file):
    import time
    path = net_file()
    net = netspec.Net(path, phase=netspec.TRAIN, buckets="off", prefetch=True)
    calls = sys.modules["prefetch_counter"].CALLS
    net.forward()
    time.sleep(0.5)
    # one batch taken, a full queue waiting, and one more held by the blocked producer
    assert len(calls) <= 1 + net._host_data.depth + 1
    net.close()


def test_a_data_layer_error_surfaces_when_its_batch_is_taken(net_file):
    path = net_file("{'fail_at': 2}")
    net = netspec.Net(path, phase=netspec.TRAIN, buckets="off", prefetch=True)
    net.forward()
    net.forward()          # batches 0 and 1 are fine, though batch 2 already failed ahead
    with pytest.raises(NetspecError) as error:
        net.forward()
    message = str(error.value)
    assert 'data layer "source"' in message and "prefetch_counter.Counter" in message
    assert "prefetch_counter.py:" in message and "ValueError: bad record 2" in message
    assert "\n" not in message


def test_the_same_error_without_the_thread(net_file):
    path = net_file("{'fail_at': 0}")
    with pytest.raises(NetspecError, match='data layer "source".*ValueError: bad record 0'):
        netspec.Net(path, phase=netspec.TRAIN, buckets="off").forward()


def test_host_data_layers_without_layers_is_a_no_op():
    layers = HostDataLayers([])
    assert not layers
    layers.start()
    assert not layers.running
    assert layers.next() == {}
