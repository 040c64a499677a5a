"""The llama.cpp that `make install` built: no AMX kernels, nothing this CPU cannot run, and
the guard for a build that has AMX anyway."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import llama_cpp
import pytest

from tutorsrv.engine.llm.llamacpp import avoid_amx_repack

# llama.cpp's names for what it was compiled with -> the CPU flag each needs (/proc/cpuinfo).
NEEDS = {
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX_VNNI": "avx_vnni",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}


def compiled_with() -> set[str]:
    info = llama_cpp.llama_print_system_info().decode()
    return {name for name, on in re.findall(r"(\w+) = (\d)", info) if on == "1"}


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("no x86 flags in /proc/cpuinfo")


def test_the_build_has_no_amx_kernels() -> None:
    assert not {"AMX_INT8", "AMX_BF16", "AMX_TILE"} & compiled_with()


def test_the_build_uses_only_instruction_sets_this_cpu_has() -> None:
    flags = cpu_flags()
    missing = sorted(f for f in compiled_with() if f in NEEDS and NEEDS[f] not in flags)
    assert not missing, f"built for {missing}, which this CPU lacks: make install again"
    assert "AVX2" in compiled_with() or "avx2" not in flags  # not a needlessly slow build


def test_a_build_with_amx_kernels_loads_models_without_repacking() -> None:
    real = llama_cpp.llama_cpp.llama_model_default_params
    native = SimpleNamespace(llama_model_default_params=real)
    amx_build = SimpleNamespace(
        llama_print_system_info=lambda: b"CPU : AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 |",
        llama_cpp=native,
    )
    assert real().use_extra_bufts is True
    assert avoid_amx_repack(amx_build) is True
    assert native.llama_model_default_params().use_extra_bufts is False
    assert avoid_amx_repack(amx_build) is True  # applied once, not wrapped twice
    # This build (no AMX) is left alone.
    assert avoid_amx_repack(llama_cpp) is False
    assert llama_cpp.llama_cpp.llama_model_default_params is real
