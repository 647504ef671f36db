"""``netspec device_query``: the devices JAX can run on (``caffe device_query``)."""


def add_arguments(p):
    pass


def run(args):
    import jax
    print(f"JAX {jax.__version__}, default backend: {jax.default_backend()}")
    for d in jax.devices():
        kind = getattr(d, "device_kind", d.platform)
        print(f"  device {d.id}: {d.platform} ({kind})")
    return 0
