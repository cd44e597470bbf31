"""What the CPU offers int8 kernels: onnxruntime's int8 speed and its numerics (and so the
int8 argmax agreement) differ between AVX2 machines and AVX-512 VNNI ones."""

from __future__ import annotations

from pathlib import Path


def int8_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The best int8 dot-product instruction set the CPU reports: ``avx512_vnni``,
    ``avx_vnni``, ``avx512bw``, ``avx2`` or ``unknown``."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "unknown"
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return next(
        (isa for isa in ("avx512_vnni", "avx_vnni", "avx512bw", "avx2") if isa in flags), "unknown"
    )
