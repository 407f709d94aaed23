"""Loading an algorithm file as a module and reading the TensorBoard events its runs write.

The one module of helpers shared by the tests (tests/conftest.py) and the benchmark scripts
(docs/benchmarks/common.py), each of which puts this folder on sys.path. It imports neither
JAX nor pytest, so a fresh interpreter can load an algorithm file with it before anything
else has imported JAX.
"""

import glob
import importlib.util
import os
import struct
import sys

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS_DIR)
ALGOS_DIR = os.path.join(ROOT, "algos")
TESTS_DIR = os.path.join(ROOT, "tests")


def algo_path(algo: str) -> str:
    return os.path.join(ALGOS_DIR, f"{algo}.py")


def load_algo(algo: str):
    """Import algos/<algo>.py from its path, as a user who copied the file would, once per
    process. Importing it sets up no devices; `import gymnax` in it runs a JAX operation, so a
    caller that wants several CPU devices sets `jax_num_cpu_devices` before loading it."""
    name = f"algos_{algo}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, algo_path(algo))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses need the module registered while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def read_events(folder: str, wall_time: bool = False) -> dict[str, dict[int, float]]:
    """Scalars of all event files in one folder: {tag: {step: value}}, or with wall_time
    {tag: {step: the Unix time it was written}}. Read without
    TensorFlow or TensorBoard, only tensorboardX's protobufs: a TFRecord file is a sequence of
    [uint64 length][uint32 crc of length][Event proto][uint32 crc of data], little endian."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(str(folder), "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            end = offset + 12 + length
            if end + 4 > len(data):  # a record still being written
                break
            event = Event.FromString(data[offset + 12:end])
            offset = end + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = (
                    event.wall_time if wall_time else value.simple_value)
    return scalars
