"""build-llamacpp.sh --patch-only against the synthetic llama.cpp tree in fixtures/."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import tree_hash

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[1] / "jetson" / "build-llamacpp.sh"
FIXTURE = HERE / "fixtures" / "llama.cpp-b5050"
CUDA = "ggml/src/ggml-cuda"


def patch(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--patch-only", str(tree)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TMPDIR": str(tree.parent)},
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    dest = tmp_path / "llama.cpp"
    shutil.copytree(FIXTURE, dest)
    (tmp_path / "tmp").mkdir()
    return dest


def test_applying_twice_equals_applying_once(tree: Path) -> None:
    original = tree_hash(tree)
    first = patch(tree)
    assert first.returncode == 0, first.stderr
    once = tree_hash(tree)
    second = patch(tree)
    assert second.returncode == 0, second.stderr
    assert tree_hash(tree) == once != original
    assert "already applied" in second.stdout
    assert not re.search(r": (patched|wrote) ", second.stdout)


def test_each_step_is_announced(tree: Path) -> None:
    out = patch(tree).stdout
    assert out.startswith("==> patches")
    for name in (
        "cuda-arch",
        "stdc++fs",
        "constexpr-device",
        "builtin-assume",
        "bf16-shim",
        "charconv-shim",
        "neon-x4",
        "wmma-stub",
    ):
        assert f"    {name}: " in out


def test_constexpr_removed_only_from_the_kvalues_table(tree: Path) -> None:
    before = (tree / CUDA / "common.cuh").read_text()
    assert patch(tree).returncode == 0
    after = (tree / CUDA / "common.cuh").read_text()
    assert "static __device__ int8_t kvalues_iq4nl[16] = {-127," in after
    assert "constexpr __device__ int8_t kvalues_iq4nl" not in after
    # constexpr functions and the traits' static constexpr members are untouched
    assert "static constexpr __device__ int ggml_cuda_get_physical_warp_size()" in after
    assert len(re.findall(r"static constexpr int q[kri] =", after)) == 3
    assert after.count("constexpr") == before.count("constexpr") - 1
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1


def test_builtin_assume_commented_out_in_the_three_fattn_headers(tree: Path) -> None:
    assert patch(tree).returncode == 0
    for name in ("fattn-common.cuh", "fattn-vec-f32.cuh", "fattn-vec-f16.cuh"):
        text = (tree / CUDA / name).read_text()
        assert re.search(r"^\s*// __builtin_assume\(tid < D\);", text, re.M), name
        assert not re.search(r"^\s*__builtin_assume\(tid < D\);", text, re.M), name
        assert "GGML_CUDA_ASSUME(tid >= 0);" in text
    # the guarded macro in common.cuh keeps its __builtin_assume
    assert (
        "#define GGML_CUDA_ASSUME(x) __builtin_assume(x)"
        in (tree / CUDA / "common.cuh").read_text()
    )


def test_shims_live_in_the_tree_not_in_the_cuda_install(tree: Path) -> None:
    assert patch(tree).returncode == 0
    shim = tree / "pollex-cuda10-shim"
    bf16 = (shim / "cuda_bf16.h").read_text()
    assert "typedef __half  nv_bfloat16;" in bf16
    assert "#include_next <cuda_bf16.h>" in bf16  # CUDA >= 11 keeps the real header
    charconv = (shim / "charconv").read_text()
    assert "from_chars" in charconv and "#include_next <charconv>" in charconv
    # the sources themselves keep their includes; nvcc finds the shims through -I
    assert "#include <cuda_bf16.h>" in (tree / CUDA / "vendors" / "cuda.h").read_text()
    assert "#include <charconv>" in (tree / CUDA / "ggml-cuda.cu").read_text()


def test_stdcxxfs_linked_after_the_targets_exist(tree: Path) -> None:
    assert patch(tree).returncode == 0
    text = (tree / "ggml" / "CMakeLists.txt").read_text()
    assert text.index("add_subdirectory(src)") < text.index(
        "target_link_libraries(ggml-base PUBLIC stdc++fs)"
    )
    assert "VERSION_LESS 9.1" in text


def test_neon_fallbacks_follow_the_intrinsic_mapping(tree: Path) -> None:
    assert patch(tree).returncode == 0
    text = (tree / "ggml" / "src" / "ggml-cpu" / "ggml-cpu-impl.h").read_text()
    define = text.index("#define ggml_vld1q_s8_x4  vld1q_s8_x4")
    guard = text.index("#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 9")
    assert define < guard < text.index("#endif // defined(__ARM_NEON)")
    for fn in (
        "int16x8x2_t ggml_vld1q_s16_x2",
        "uint8x16x2_t ggml_vld1q_u8_x2",
        "uint8x16x4_t ggml_vld1q_u8_x4",
        "int8x16x2_t ggml_vld1q_s8_x2",
        "int8x16x4_t ggml_vld1q_s8_x4",
    ):
        assert f"static inline {fn}(" in text
        assert text.count(f"#undef {fn.split()[1]}") == 1


def test_wmma_kernel_replaced_by_an_aborting_stub(tree: Path) -> None:
    assert patch(tree).returncode == 0
    text = (tree / CUDA / "fattn-wmma-f16.cu").read_text()
    assert (
        "void ggml_cuda_flash_attn_ext_wmma_f16("
        "ggml_backend_cuda_context & ctx, ggml_tensor * dst) {" in text
    )
    assert "GGML_ABORT(" in text and "tensor cores" in text
    assert "wmma::" not in text


def test_a_half_patched_tree_is_completed(tree: Path, tmp_path: Path) -> None:
    assert patch(tree).returncode == 0
    full = tree_hash(tree)
    for rel in (f"{CUDA}/fattn-vec-f16.cuh", f"{CUDA}/fattn-wmma-f16.cu", "ggml/CMakeLists.txt"):
        shutil.copy(FIXTURE / rel, tree / rel)
    shutil.rmtree(tree / "pollex-cuda10-shim")
    result = patch(tree)
    assert result.returncode == 0, result.stderr
    assert tree_hash(tree) == full


def _drop_line(needle: str) -> Callable[[str], str]:
    return lambda text: "".join(line for line in text.splitlines(True) if needle not in line)


BREAKAGES: dict[str, Callable[[str], str]] = {
    "ggml/CMakeLists.txt": _drop_line("add_subdirectory(src)"),
    f"{CUDA}/CMakeLists.txt": lambda t: t.replace(
        "NOT DEFINED CMAKE_CUDA_ARCHITECTURES", "GGML_NATIVE"
    ),
    f"{CUDA}/common.cuh": lambda t: t.replace("kvalues_iq4nl", "kvalues_renamed"),
    f"{CUDA}/fattn-common.cuh": _drop_line("__builtin_assume(tid < D);"),
    f"{CUDA}/fattn-vec-f32.cuh": _drop_line("__builtin_assume(tid < D);"),
    f"{CUDA}/fattn-vec-f16.cuh": _drop_line("__builtin_assume(tid < D);"),
    f"{CUDA}/vendors/cuda.h": _drop_line("cuda_bf16.h"),
    f"{CUDA}/ggml-cuda.cu": _drop_line("<charconv>"),
    "ggml/src/ggml-cpu/ggml-cpu-impl.h": _drop_line("#define ggml_vld1q_s8_x4"),
    f"{CUDA}/fattn-wmma-f16.cu": lambda t: t.replace(
        "ggml_cuda_flash_attn_ext_wmma_f16", "renamed"
    ),
}


@pytest.mark.parametrize("rel", sorted(BREAKAGES))
def test_missing_pattern_fails_naming_the_file(tree: Path, rel: str) -> None:
    target = tree / rel
    target.write_text(BREAKAGES[rel](target.read_text()))
    result = patch(tree)
    assert result.returncode != 0
    assert f"pattern not found in {target}" in result.stderr


def test_missing_file_fails_naming_it(tree: Path) -> None:
    target = tree / CUDA / "fattn-vec-f16.cuh"
    target.unlink()
    result = patch(tree)
    assert result.returncode != 0
    assert f"file not found: {target}" in result.stderr


def test_duplicate_anchor_is_refused(tree: Path) -> None:
    target = tree / "ggml" / "src" / "ggml-cpu" / "ggml-cpu-impl.h"
    target.write_text(target.read_text() + "#define ggml_vld1q_s8_x4  vld1q_s8_x4\n")
    result = patch(tree)
    assert result.returncode != 0
    assert str(target) in result.stderr and "found 2" in result.stderr


def test_not_a_llama_cpp_tree(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = patch(tmp_path / "empty")
    assert result.returncode != 0
    assert "does not look like a llama.cpp tree" in result.stderr
