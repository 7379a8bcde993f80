"""TensorFlow start-up for jobs: its C++ start-up chatter kept out of task logs.

Importing TensorFlow and asking it for GPUs writes lines straight to file descriptor 2 (before
absl's logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot hide them): the oneDNN notice,
"Could not find cuda drivers", and on a machine without a GPU an `E0000 ... failed call to
cuInit` that Airflow shows as an error. `start_tensorflow()` does both with descriptor 2
captured, logs the known noise at DEBUG and anything else at WARNING, so a real problem (a
driver mismatch on a GPU machine) still shows.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# Lines TensorFlow writes at start-up on a healthy machine (CPU-only or GPU).
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on"
    r"|Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered|TF-TRT Warning"
    r"|This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler"
    r"|Attempting to register factory for plugin"
)
# On a machine with no GPU device node, cuInit failing is the expected answer, not an error.
_NO_GPU_NOISE = re.compile(r"failed call to cuInit|CUDA_ERROR_NO_DEVICE|UNKNOWN ERROR \(303\)")
_GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")

_started: dict[str, Any] = {}


def has_gpu_device() -> bool:
    """True when the machine has an NVIDIA device node (a GPU the driver exposes)."""
    return any(os.path.exists(node) for node in _GPU_DEVICE_NODES)


@contextmanager
def captured_stderr_fd() -> Iterator[list[str]]:
    """Capture what is written to file descriptor 2 (C++ included); yields the lines, filled
    in when the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def is_noise(line: str, gpu_device: bool) -> bool:
    """True for start-up lines that say nothing wrong on this machine."""
    if _NOISE.search(line):
        return True
    return not gpu_device and bool(_NO_GPU_NOISE.search(line))


def start_tensorflow() -> dict[str, Any]:
    """Import TensorFlow and list its GPUs once per process, with the start-up chatter logged
    at DEBUG (anything unexpected at WARNING). Returns {"tensorflow", "gpus", "device"}."""
    if _started:
        return _started
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later C++ INFO/WARNING lines
    with captured_stderr_fd() as lines:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    gpu_device = has_gpu_device()
    for line in filter(None, (raw.strip() for raw in lines)):
        log.log(logging.DEBUG if is_noise(line, gpu_device) else logging.WARNING, "%s", line)
    device = f"{len(gpus)} GPU(s)" if gpus else "CPU (no GPU found)"
    _started.update(tensorflow=tf.__version__, gpus=len(gpus), device=device)
    log.debug("TensorFlow %s on %s", tf.__version__, device)
    return _started


# Precision and devices, for training and inference alike (TensorFlow is imported when asked).
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def resolve_precision(precision: str = "auto") -> str:
    """auto -> float16 with a GPU, bfloat16 on a CPU with AMX or AVX512-BF16, else float32."""
    if precision != "auto":
        if precision not in POLICIES:
            raise ValueError(f"unknown precision {precision!r}; choose auto or {list(POLICIES)}")
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "float16"
    return "bfloat16" if _cpu_has_bf16() else "float32"


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:  # not Linux: be conservative
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def distribution_strategy() -> Any:
    """MirroredStrategy over all visible GPUs when there are several, else the default."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()
