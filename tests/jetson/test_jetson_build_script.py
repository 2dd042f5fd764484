"""jetson/build-llamacpp.sh end to end, with stubs for every program that changes the system."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .conftest import Sandbox

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[1] / "jetson" / "build-llamacpp.sh"
FIXTURE = HERE / "fixtures" / "llama.cpp-b5050"
MODEL = "qwen2.5-1.5b-instruct-q4_0.gguf"
# The dialect and CPU flags of the published b5050 Nano build (kreier/llama.cpp-jetson).
NANO_FLAGS = {
    "CMAKE_CUDA_STANDARD": "14",
    "CMAKE_CUDA_STANDARD_REQUIRED": "true",
    "GGML_CPU_ARM_ARCH": "armv8-a",
    "GGML_NATIVE": "off",
}
STEPS = (
    "build dependencies",
    "cmake >=",
    "llama.cpp b5050",
    "patches",
    "cmake configure",
    "build llama-server",
    "install llama-server",
    f"model {MODEL}",
    "llama-server.service",
)

# Stub calls that only look: allowed in a dry run and in a run that has nothing to do.
READ_ONLY_PREFIXES = (
    "dpkg-query ",
    "nvcc --version",
    "cmake --version",
    "venv-cmake --version",
    "getent ",
    "systemctl is-enabled ",
    "systemctl is-active ",
)


def mutating(log: list[str]) -> list[str]:
    return [
        line
        for line in log
        if not line.startswith(READ_ONLY_PREFIXES) and " rev-parse " not in line
    ]


def paths(sb: Sandbox) -> dict[str, Path]:
    e = sb.env
    return {
        "build": Path(e["BUILD_DIR"]),
        "bin": Path(e["PREFIX_BIN"]) / "llama-server",
        "model": Path(e["MODEL_DIR"]) / MODEL,
        "unit": Path(e["UNIT_DIR"]) / "llama-server.service",
        "venv": Path(e["TOOLS_DIR"]) / "cmake-venv",
    }


def test_dry_run_prints_every_step_and_changes_nothing(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    result = sb.run_ok(SCRIPT, "--dry-run")
    out = result.stdout
    for step in STEPS:
        assert f"==> {step}" in out
    for expected in (
        "[dry-run] env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        "gcc-8 g++-8 make cmake git",
        "libcurl4-openssl-dev",
        "[dry-run] python3 -m venv",
        "install --quiet cmake==3.28.4",
        "[dry-run] git clone --depth 1 --branch b5050",
        "[dry-run] apply and verify the CUDA 10.2 / gcc-8 patches",
        "-DGGML_CUDA=ON",
        "-DCMAKE_CUDA_ARCHITECTURES=53",
        "-DCMAKE_C_COMPILER=/usr/bin/gcc-8",
        "-DCMAKE_CXX_COMPILER=/usr/bin/g++-8",
        "-DCMAKE_BUILD_TYPE=Release",
        "[dry-run] check CMAKE_CUDA_ARCHITECTURES=53",
        *(f"-D{name}={value}" for name, value in NANO_FLAGS.items()),
        *(f"[dry-run] check {name}={value} in " for name, value in NANO_FLAGS.items()),
        "make -C",
        "-j4 llama-server",
        "[dry-run] curl -fL --retry 5 --retry-delay 10 -C - -o",
        "[dry-run] useradd --system",
        "[dry-run] systemctl restart llama-server",
    ):
        assert expected in out, expected
    assert mutating(sb.log()) == []
    for p in paths(sb).values():
        assert not p.exists(), p
    assert not (sb.root / "opt").exists()


def test_first_run_does_everything_second_run_skips_everything(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    p = paths(sb)
    first = sb.run_ok(SCRIPT)
    for step in STEPS:
        assert f"==> {step}" in first.stdout
    log = "\n".join(sb.log())
    for call in (
        "apt-get update",
        "apt-get install -y --no-install-recommends gcc-8 g++-8",
        "python3 -m venv",
        "pip install --quiet cmake==3.28.4",
        "git clone --depth 1 --branch b5050 https://github.com/ggml-org/llama.cpp.git",
        "venv-cmake -S",
        "-DCMAKE_CUDA_ARCHITECTURES=53",
        "-DCMAKE_CUDA_HOST_COMPILER=/usr/bin/g++-8",
        f"-DCMAKE_CUDA_FLAGS=-I{p['build']}/pollex-cuda10-shim",
        *(f"-D{name}={value}" for name, value in NANO_FLAGS.items()),
        f"make -C {p['build']}/build -j4 llama-server",
        "-C - -o",
        "useradd --system --user-group",
        "systemctl daemon-reload",
        "systemctl enable llama-server",
        "systemctl restart llama-server",
    ):
        assert call in log, call
    # what the run left behind
    assert p["bin"].read_text().startswith("#!/bin/sh")
    assert p["model"].read_bytes() == Path(sb.env["STUB_MODEL_SRC"]).read_bytes()
    assert Path(f"{p['model']}.sha256").read_text().strip() == sb.env["STUB_MODEL_SHA"]
    assert "pollex-jetson" in (p["build"] / "ggml" / "CMakeLists.txt").read_text()
    unit = p["unit"].read_text()
    assert f"ExecStart={p['bin']} -m {p['model']} --port 8080" in unit
    cache = (p["build"] / "build" / "CMakeCache.txt").read_text().splitlines()
    assert "CMAKE_CUDA_ARCHITECTURES:STRING=53" in cache
    for name, value in NANO_FLAGS.items():
        assert f"{name}:STRING={value}" in cache, name
        assert f"    {name}={value}" in first.stdout, name  # checked, and said so
    assert "pollex-build.log" in first.stdout

    sb.clear_log()
    second = sb.run_ok(SCRIPT)
    assert mutating(sb.log()) == []
    assert "is installed, skipping the build (--force rebuilds)" in second.stdout
    assert "present and verified" in second.stdout
    assert "is up to date" in second.stdout and "llama-server is running" in second.stdout


def test_force_rebuilds_but_reuses_deps_cmake_and_clone(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    sb.run_ok(SCRIPT)
    sb.clear_log()
    result = sb.run_ok(SCRIPT, "--force")
    log = "\n".join(sb.log())
    assert "venv-cmake -S" in log and "make -C" in log
    assert "systemctl restart llama-server" in log
    for absent in ("apt-get", "git clone", "python3", "pip ", "useradd", "curl"):
        assert not any(line.startswith(absent) for line in sb.log()), absent
    assert "existing clone is at 23106f9, reusing it" in result.stdout
    assert "patches" in result.stdout and "already applied" in result.stdout


def test_existing_clone_at_the_pinned_commit_is_reused(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    build = paths(sb)["build"]
    shutil.copytree(FIXTURE, build)
    (build / ".git").mkdir()
    (build / ".git" / "STUB_HEAD").write_text(sb.env["STUB_GIT_HEAD"] + "\n")
    result = sb.run_ok(SCRIPT)
    assert "reusing it" in result.stdout
    assert not any(line.startswith("git clone") for line in sb.log())


def test_tag_at_another_commit_is_refused(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    result = sb.run(SCRIPT, STUB_GIT_HEAD="0123456789abcdef0123456789abcdef01234567")
    assert result.returncode != 0
    assert "b5050 is at 0123456789" in result.stderr and "expected 23106f9" in result.stderr
    assert not paths(sb)["bin"].exists()


def test_build_dir_that_is_not_a_clone_is_refused(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    paths(sb)["build"].mkdir(parents=True)
    result = sb.run(SCRIPT)
    assert result.returncode != 0
    assert "exists but is not a git clone" in result.stderr


def test_wrong_cuda_arch_in_the_cmake_cache_fails(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    result = sb.run(SCRIPT, STUB_CONFIGURED_ARCH="50;61;70;75;80")
    assert result.returncode != 0
    assert "CMAKE_CUDA_ARCHITECTURES is '50;61;70;75;80'" in result.stderr
    assert "CMakeCache.txt" in result.stderr
    assert not any(line.startswith("make ") for line in sb.log())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STUB_CACHE_CMAKE_CUDA_STANDARD": "17"}, "CMAKE_CUDA_STANDARD is '17'"),
        ({"STUB_CACHE_CMAKE_CUDA_STANDARD_REQUIRED": "OFF"}, "_STANDARD_REQUIRED is 'OFF'"),
        ({"STUB_CACHE_GGML_CPU_ARM_ARCH": "armv8.2-a+dotprod"}, "GGML_CPU_ARM_ARCH is 'armv8.2-a"),
        ({"STUB_CACHE_GGML_NATIVE": "ON"}, "GGML_NATIVE is 'ON'"),
        ({"STUB_CACHE_DROP": "CMAKE_CUDA_STANDARD"}, "CMAKE_CUDA_STANDARD is ''"),
        ({"STUB_CACHE_DROP": "GGML_NATIVE"}, "GGML_NATIVE is ''"),
    ],
    ids=["dialect-17", "not-required", "other-arm-arch", "native-on", "no-standard", "no-native"],
)
def test_a_cache_without_the_nano_flags_stops_before_make(
    build_sandbox: Sandbox, env: dict[str, str], message: str
) -> None:
    sb = build_sandbox
    result = sb.run(SCRIPT, **env)
    assert result.returncode != 0
    assert message in result.stderr and "CMakeCache.txt, expected" in result.stderr
    assert "see NANO_CMAKE_FLAGS in " in result.stderr
    assert not any(line.startswith("make ") for line in sb.log())


def test_cmake_spellings_of_true_and_false_pass_the_check(build_sandbox: Sandbox) -> None:
    result = build_sandbox.run_ok(
        SCRIPT, STUB_CACHE_CMAKE_CUDA_STANDARD_REQUIRED="ON", STUB_CACHE_GGML_NATIVE="FALSE"
    )
    assert "    CMAKE_CUDA_STANDARD_REQUIRED=ON" in result.stdout
    assert "    GGML_NATIVE=FALSE" in result.stdout


def test_each_nano_flag_has_a_one_line_reason() -> None:
    text = SCRIPT.read_text()
    block = re.search(r"^NANO_CMAKE_FLAGS=\(\n(.*?)^\)$", text, re.M | re.S)
    assert block is not None
    lines = [line.strip() for line in block.group(1).splitlines()]
    reasons, flags = lines[0::2], lines[1::2]
    assert flags == [f"-D{name}={value}" for name, value in NANO_FLAGS.items()]
    for reason in reasons:
        assert reason.startswith("# ") and len(reason) > 30, reason
    # passed to cmake and checked in the cache, in that function order
    assert '"${NANO_CMAKE_FLAGS[@]}" \\' in text
    assert text.index("check_configured\n}") < text.index("check_configured() {")


def test_recent_distro_cmake_is_used_without_a_venv(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    result = sb.run_ok(SCRIPT, STUB_CMAKE_VERSION="3.22.1")
    assert "using cmake (3.22.1), skipping" in result.stdout
    assert not any(line.startswith(("python3", "pip ", "venv-")) for line in sb.log())
    assert any(line.startswith("cmake -S") for line in sb.log())


def test_interrupted_download_is_resumed(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    model = paths(sb)["model"]
    model.parent.mkdir(parents=True)
    src = Path(sb.env["STUB_MODEL_SRC"]).read_bytes()
    Path(f"{model}.part").write_bytes(src[:1000])
    result = sb.run_ok(SCRIPT)
    assert f"resuming {model}.part" in result.stdout
    assert model.read_bytes() == src
    assert not Path(f"{model}.part").exists()


def test_checksum_mismatch_fails_and_drops_the_download(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    result = sb.run(SCRIPT, STUB_MODEL_SHA="0" * 64)
    assert result.returncode != 0
    assert f"sha256 of {MODEL}" in result.stderr and "expected 0000" in result.stderr
    model = paths(sb)["model"]
    assert not model.exists() and not Path(f"{model}.part").exists()


def test_size_mismatch_keeps_the_partial_file_for_resuming(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    result = sb.run(SCRIPT, STUB_MODEL_SIZE="999999999")
    assert result.returncode != 0
    assert "expected 999999999" in result.stderr and "re-run to resume" in result.stderr
    assert Path(f"{paths(sb)['model']}.part").exists()


def test_unreachable_headers_ask_for_pinned_values(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    result = sb.run(SCRIPT, STUB_MODEL_SIZE="", STUB_MODEL_SHA="")
    assert result.returncode != 0
    assert "set MODEL_SIZE and MODEL_SHA256" in result.stderr


def test_pinned_checksum_skips_the_header_lookup(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    data = Path(sb.env["STUB_MODEL_SRC"]).read_bytes()
    sb.run_ok(SCRIPT, MODEL_SHA256=hashlib.sha256(data).hexdigest(), MODEL_SIZE=str(len(data)))
    assert not any(line.startswith("curl -fsSIL") for line in sb.log())


def test_model_file_is_a_one_line_change(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    sb.run_ok(SCRIPT, MODEL_FILE="qwen2.5-1.5b-instruct-q4_k_m.gguf", MODEL_URL="")
    p = paths(sb)
    q4km = p["model"].with_name("qwen2.5-1.5b-instruct-q4_k_m.gguf")
    assert q4km.exists()
    assert f"-m {q4km} " in p["unit"].read_text()
    assert any(
        "https://huggingface.co/Qwen/Qwen2.5-1.5B-Instruct-GGUF/resolve/main/qwen2.5-1.5b-instruct-q4_k_m.gguf"
        in line
        for line in sb.log()
    )


def test_missing_nvcc_stops_before_touching_anything(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    shutil.rmtree(sb.root / "cuda")
    result = sb.run(SCRIPT)
    assert result.returncode != 0
    assert "no nvcc at" in result.stderr
    assert mutating(sb.log()) == []


def test_non_root_is_refused(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    fake_id = Path(sb.env["STUB_DIR"]) / "id"
    fake_id.write_text("#!/bin/bash\n[[ $1 == -u ]] && echo 1000 || echo user\n")
    fake_id.chmod(0o755)
    result = sb.run(SCRIPT, ALLOW_NON_ROOT="0")
    assert result.returncode != 0 and "run as root" in result.stderr
    assert sb.log() == []


def test_help_and_bad_arguments(build_sandbox: Sandbox) -> None:
    sb = build_sandbox
    assert "--patch-only DIR" in sb.run_ok(SCRIPT, "--help").stdout
    bad = sb.run(SCRIPT, "--frobnicate")
    assert bad.returncode != 0 and "unknown argument: --frobnicate" in bad.stderr
    missing = sb.run(SCRIPT, "--patch-only")
    assert missing.returncode != 0 and "--patch-only needs a directory" in missing.stderr
