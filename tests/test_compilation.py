"""netspec.compilation: one log line per compiled executable (net, pass, bucket, seconds),
run totals, and JAX's persistent cache reused by a second process."""
import io
import os
import re
import subprocess
import sys
import textwrap


import netspec
from netspec import compilation
from netspec.log import Log

NET = '''name: "fcnish"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 20 dim: 20 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
'''


def pooled(size):
    """Caffe's ceil-rounded 2x2/2 pooling."""
    return -(-(size - 2) // 2) + 1


def test_one_log_line_per_compile_naming_net_pass_and_bucket(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    stream = io.StringIO()
    net = netspec.Net(str(path), phase=netspec.TEST, buckets=32, log=Log(stream))
    before = compilation.TOTALS.snapshot()
    for h, w in [(20, 20), (25, 30), (32, 32), (40, 20), (20, 40)]:
        net.blobs["data"].reshape(1, 2, h, w)
        net.blobs["data"].data[...] = 1
        net.forward()
        assert net.blobs["pool"].data.shape == (1, 3, pooled(h), pooled(w))
    lines = [line for line in stream.getvalue().splitlines() if "Compiled" in line]
    # 20x20, 25x30 and 32x32 share bucket 32x32; 40x20 -> 64x32; 20x40 -> 32x64
    assert len(lines) == 3
    for line, bucket in zip(lines, ["32x32", "64x32", "32x64"]):
        assert re.search(rf'Compiled forward of net "fcnish" \(TEST\), bucket {bucket} in \d+\.\d+ s', line)
    assert compilation.TOTALS.count - before[0] == 3
    summary = compilation.TOTALS.since(before)
    assert re.fullmatch(r"Compiled 3 executables in \d+\.\d s", summary)


def test_exact_shapes_compile_once_per_size(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    stream = io.StringIO()
    net = netspec.Net(str(path), phase=netspec.TEST, buckets="off", log=Log(stream))
    for h in (20, 21, 22, 20):
        net.blobs["data"].reshape(1, 2, h, h)
        net.forward()
    lines = [line for line in stream.getvalue().splitlines() if "Compiled" in line]
    assert [re.search(r"bucket (\S+ \S+)", line).group(1) for line in lines] == \
        ["exact 20x20", "exact 21x21", "exact 22x22"]


def test_configuration_of_the_persistent_cache(tmp_path, monkeypatch):
    import jax
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NETSPEC_CACHE_DIR", raising=False)
    assert compilation.default_cache_dir() == os.path.join(str(tmp_path), "netspec")
    monkeypatch.setenv("NETSPEC_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert compilation.default_cache_dir() == str(tmp_path / "elsewhere")
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        compilation.enable_cache(tmp_path / "c")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == compilation.MIN_COMPILE_SECONDS
        compilation.disable_cache()
        assert not jax.config.jax_enable_compilation_cache
    finally:
        jax.config.update("jax_compilation_cache_dir", old[0])
        jax.config.update("jax_enable_compilation_cache", old[1])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old[2])


SCRIPT = textwrap.dedent('''
    import io, sys
    import jax
    import netspec
    from netspec.log import Log
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    stream = io.StringIO()
    net = netspec.Net(sys.argv[1], phase=netspec.TEST, log=Log(stream))
    net.forward()
    print(stream.getvalue())
''')


def test_a_second_process_loads_the_executable_from_the_cache(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    env = dict(os.environ, NETSPEC_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NETSPEC_NO_COMPILE_CACHE", None)
    runs = [subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, capture_output=True,
                           text=True, check=True).stdout for _ in range(2)]
    assert "from the compile cache" not in runs[0]
    assert re.search(r'Compiled forward of net "fcnish" \(TEST\), bucket exact 20x20 in .* s \(from the compile cache\)',
                     runs[1])
    assert any(os.scandir(tmp_path / "cache"))
