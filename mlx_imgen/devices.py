"""Peak compute and memory bandwidth of common devices, so reports can state the share reached.

GPU and Apple figures are vendor datasheet values (dense, no sparsity); the CPU's peak is not
looked up but measured at start-up with an fp32 matmul through the BLAS that MLX uses.
"""

import os
import platform
import re
import time

# name fragment -> (fp32 TFLOP/s, fp16/bf16 TFLOP/s, memory bandwidth GB/s); longest match wins
DATASHEET = {
    "Apple M1": (2.6, 2.6, 68), "Apple M1 Pro": (5.2, 5.2, 200),
    "Apple M1 Max": (10.4, 10.4, 400), "Apple M1 Ultra": (21.0, 21.0, 800),
    "Apple M2": (3.6, 3.6, 100), "Apple M2 Pro": (6.8, 6.8, 200),
    "Apple M2 Max": (13.6, 13.6, 400), "Apple M2 Ultra": (27.2, 27.2, 800),
    "Apple M3": (4.1, 4.1, 100), "Apple M3 Pro": (7.4, 7.4, 150),
    "Apple M3 Max": (16.4, 16.4, 400), "Apple M4": (4.3, 4.3, 120),
    "Apple M4 Pro": (9.2, 9.2, 273), "Apple M4 Max": (18.4, 18.4, 546),
    "H100 80GB HBM3": (67.0, 989.0, 3350), "H100 PCIe": (51.0, 756.0, 2000),
    "H200": (67.0, 989.0, 4800), "A100": (19.5, 312.0, 2039), "L40S": (91.6, 362.0, 864),
    "L4": (30.3, 121.0, 300), "A10G": (31.2, 125.0, 600), "T4": (8.1, 65.0, 320),
    "V100": (15.7, 125.0, 900), "RTX 4090": (82.6, 165.0, 1008), "RTX 3090": (35.6, 71.0, 936),
}


def datasheet_peak(device_name: str | None) -> dict | None:
    if not device_name:
        return None
    hits = [k for k in DATASHEET if k.lower() in device_name.lower()]
    if not hits:
        return None
    fp32, half, bandwidth = DATASHEET[max(hits, key=len)]
    return {"source": "datasheet", "name": max(hits, key=len), "fp32_tflops": fp32,
            "fp16_tflops": half, "bandwidth_gbs": bandwidth}


def measured_cpu_peak(size: int = 768, repeats: int = 4) -> dict:
    """fp32 matmul GFLOP/s on the CPU stream, measured now (best of `repeats`)."""
    import mlx.core as mx

    a = mx.random.normal((size, size), stream=mx.cpu)
    b = mx.random.normal((size, size), stream=mx.cpu)
    mx.eval(mx.matmul(a, b, stream=mx.cpu))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(mx.matmul(a, b, stream=mx.cpu))
        best = min(best, time.perf_counter() - start)
    tflops = 2 * size ** 3 / best / 1e12
    return {"source": f"measured ({size}x{size} fp32 matmul)", "fp32_tflops": tflops,
            "fp16_tflops": None, "bandwidth_gbs": None}


def copy_bandwidth(megabytes: int = 512, repeats: int = 7) -> float:
    """Bytes per second of an out-of-place copy of a large array (read plus written), on the
    CPU stream: the memory bandwidth a CPU decode step is held to."""
    import mlx.core as mx

    x = mx.random.uniform(shape=(megabytes * 2 ** 18,), stream=mx.cpu) + 0.0
    mx.eval(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        # x alone holds its buffer, so MLX writes the result into it: no fresh pages to fault
        # in, one read and one write of every byte
        x = mx.add(x, 0.0, stream=mx.cpu)
        mx.eval(x)
        best = min(best, time.perf_counter() - start)
    return 2 * x.nbytes / best


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform reports)."""
    found = re.search(r"model name\s*:\s*(.*)", _cpuinfo())
    return found.group(1).strip() if found else platform.processor() or platform.machine()


def cpu_description() -> str:
    """Model name, core count and the widest x86 vector extension, as benchmarks name the CPU."""
    found = re.search(r"flags\s*:\s*(.*)", _cpuinfo())
    flags = set(found.group(1).split()) if found else set()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{cpu_name()}, {os.cpu_count()} cores, {simd}"


def on_cpu() -> bool:
    """Whether MLX computes on the CPU (no GPU device, or the CPU chosen)."""
    import mlx.core as mx

    return mx.default_device().type == mx.cpu
