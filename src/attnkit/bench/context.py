"""The context printed beside every figure (BENCHMARKING.md): machine, threads, versions."""

from __future__ import annotations

import datetime
import os
import platform

import torch


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    if model == "unknown":
        model = platform.processor() or platform.machine() or "unknown"
    return model, flags


def _mem_total_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def machine() -> dict:
    """CPU model, flags and count, memory, torch and its thread count, Python, attnkit, the date."""
    from .. import __version__

    model, flags = _cpuinfo()
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "cpu_simd_flags": [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "f16c"))],
        "mem_total_mib": _mem_total_mib(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_parallel_info": torch.__config__.parallel_info().splitlines()[:6],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "attnkit": __version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }
