#!/usr/bin/env bash
# Build llama.cpp's llama-server for the Jetson Nano 4GB (JetPack 4.6: Ubuntu 18.04
# aarch64, CUDA 10.2, Maxwell GPU sm_53), install it to /usr/local/bin, download the
# GGUF model and install llama-server.service; lib.sh must be beside this script.
#
#   sudo ./build-llamacpp.sh [--force] [--dry-run]
#   ./build-llamacpp.sh --patch-only DIR     apply + verify the patches to a llama.cpp tree
#
# Idempotent: each step checks whether its result is already in place, so an
# interrupted run is simply started again. --force rebuilds an installed llama-server.
# DRY_RUN=1 (or --dry-run) prints every command that would change the system instead
# of running it; read-only checks still run. Every path can be overridden from the
# environment (the tests run the whole script inside a temporary directory).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$SCRIPT_DIR/lib.sh"   # step say warn die quote run write_file file_sha256

LLAMA_REPO="${LLAMA_REPO:-https://github.com/ggml-org/llama.cpp.git}"
LLAMA_TAG="${LLAMA_TAG:-b5050}"
LLAMA_COMMIT="${LLAMA_COMMIT:-23106f9}"
BUILD_DIR="${BUILD_DIR:-/opt/llama.cpp-build}"   # the clone; cmake builds in $BUILD_DIR/build
TOOLS_DIR="${TOOLS_DIR:-/opt/llama.cpp-tools}"
CMAKE_VENV="${CMAKE_VENV:-$TOOLS_DIR/cmake-venv}"
PREFIX_BIN="${PREFIX_BIN:-/usr/local/bin}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
CUDA_ARCH="${CUDA_ARCH:-53}"                     # Maxwell, the Nano's GPU
JOBS="${JOBS:-4}"
CC_BIN="${CC_BIN:-/usr/bin/gcc-8}"
CXX_BIN="${CXX_BIN:-/usr/bin/g++-8}"
LOG_FILE="${LOG_FILE:-$BUILD_DIR/build/pollex-build.log}"

# Q4_0 measured ~20% faster than Q4_K_M on the Nano's Maxwell GPU.
# For Q4_K_M: MODEL_FILE=qwen2.5-1.5b-instruct-q4_k_m.gguf (URL and unit follow it).
MODEL_FILE="${MODEL_FILE:-qwen2.5-1.5b-instruct-q4_0.gguf}"
MODEL_URL="${MODEL_URL:-https://huggingface.co/Qwen/Qwen2.5-1.5B-Instruct-GGUF/resolve/main/$MODEL_FILE}"
MODEL_DIR="${MODEL_DIR:-/opt/llama-models}"
# Empty: learned from Hugging Face's X-Linked-Size / X-Linked-Etag (the LFS sha256) headers.
MODEL_SHA256="${MODEL_SHA256:-}"
MODEL_SIZE="${MODEL_SIZE:-}"

UNIT_SRC="${UNIT_SRC:-$SCRIPT_DIR/llama-server.service}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
LLAMA_USER="${LLAMA_USER:-llama}"

# ggml-cuda's CMakeLists needs CMAKE_CUDA_ARCHITECTURES support (3.18); Ubuntu 18.04 has 3.10.
CMAKE_MIN_VERSION=3.18
# Newer cmake comes from PyPI's manylinux2014_aarch64 wheel (glibc 2.17 <= 18.04's 2.27)
# into a private venv: pip checks the wheel's hash, nothing lands in /usr, and 3.28.4 is
# the newest release whose wheel installs on JetPack's Python 3.6. Kitware's aarch64
# tarball would work too but needs a hand-pinned checksum and a PATH entry.
CMAKE_PIP_VERSION="${CMAKE_PIP_VERSION:-3.28.4}"
PIP_FOR_PY36='pip<22'   # pip 9 of Ubuntu 18.04 cannot read manylinux2014 tags; 21.3 is the last for 3.6

# gcc-8 is the newest gcc nvcc 10.2 accepts as host compiler, and the oldest with the C++17
# that llama.cpp's host code needs (18.04's default gcc 7 lacks <filesystem>).
BUILD_DEPS=(gcc-8 g++-8 make cmake git curl ca-certificates libcurl4-openssl-dev python3-venv)
SHIM_DIRNAME=pollex-cuda10-shim   # inside the tree; passed to nvcc with -I
MARK=pollex-jetson                # marks every patched spot

# The configure flags of the published Nano build of b5050 (kreier/llama.cpp-jetson,
# patch/b5050/README.md), each checked in CMakeCache.txt after configuring like the arch.
NANO_CMAKE_FLAGS=(
    # ggml's targets ask for cxx_std_17, from which CMake derives a CUDA17 dialect nvcc 10.2 lacks
    -DCMAKE_CUDA_STANDARD=14
    # C++14 as a requirement, not a wish: CMake must not let another dialect reach nvcc
    -DCMAKE_CUDA_STANDARD_REQUIRED=true
    # the Nano's Cortex-A57 is plain ARMv8.0-A: no dotprod, fp16 arithmetic, i8mm or SVE
    -DGGML_CPU_ARM_ARCH=armv8-a
    # no -mcpu=native probing of the build host: ggml honours GGML_CPU_ARM_ARCH only when off
    -DGGML_NATIVE=off
)

DRY_RUN="${DRY_RUN:-0}"
ALLOW_NON_ROOT="${ALLOW_NON_ROOT:-0}"
FORCE=0
PATCH_ONLY=""
RESTART_NEEDED=0
CMAKE=cmake

# Long, noisy commands go to $LOG_FILE; on failure the tail is shown.
run_logged() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '[dry-run] %s >>%s\n' "$(quote "$@")" "$LOG_FILE"
        return 0
    fi
    mkdir -p "$(dirname "$LOG_FILE")"
    if ! "$@" >>"$LOG_FILE" 2>&1; then
        tail -n 40 "$LOG_FILE" >&2 || true
        die "'$1' failed; full log: $LOG_FILE (see jetson/README.md, troubleshooting)"
    fi
}

version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]; }

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

parse_args() {
    while (($#)); do
        case $1 in
            --force) FORCE=1 ;;
            --dry-run) DRY_RUN=1 ;;
            --patch-only)
                (($# >= 2)) || die "--patch-only needs a directory"
                PATCH_ONLY=$2
                shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done
}

# --------------------------------------------------------------------------------
# CUDA 10.2 / gcc-8 patches. Each one: already applied? -> say so; pattern present?
# else die naming the file; apply; verify the result, else die naming the file.
# --------------------------------------------------------------------------------

patch_fail() { die "patch $1: pattern not found in $2"; }

require_file() { [[ -f $2 ]] || die "patch $1: file not found: $2"; }

# sed_patch NAME FILE OLD NEW SED_EXPR: OLD/NEW are EREs for the unpatched/patched line.
# Verified: no OLD line left, NEW present, and exactly the OLD lines changed.
sed_patch() {
    local name=$1 file=$2 old=$3 new=$4 expr=$5 before wanted changed
    require_file "$name" "$file"
    if ! grep -Eq -- "$old" "$file"; then
        grep -Eq -- "$new" "$file" || patch_fail "$name" "$file"
        say "$name: already applied ($file)"
        return 0
    fi
    wanted=$(grep -Ec -- "$old" "$file")
    before=$(mktemp)
    cp "$file" "$before"
    sed -E -i "$expr" "$file"
    changed=$(diff "$before" "$file" | grep -c '^>' || true)
    rm -f "$before"
    if grep -Eq -- "$old" "$file" || ! grep -Eq -- "$new" "$file" || [[ $changed != "$wanted" ]]; then
        die "patch $name: sed did not change $file as expected ($changed of $wanted lines)"
    fi
    say "$name: patched $file"
}

# write_shim NAME FILE: content on stdin; verified by the marker.
write_shim() {
    local name=$1 file=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        say "$name: already in place ($file)"
        return 0
    fi
    mkdir -p "$(dirname "$file")"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$file"
    grep -q "$MARK" "$file" || die "patch $name: could not write $file"
    say "$name: wrote $file"
}

patch_stdcxxfs() {
    local name=stdc++fs file=$1/ggml/CMakeLists.txt
    require_file "$name" "$file"
    if grep -q "$MARK: stdc++fs" "$file"; then
        say "$name: already applied ($file)"
        return 0
    fi
    # The targets must exist when we add to them: append after add_subdirectory(src).
    grep -Eq '^[[:space:]]*add_subdirectory\(src\)' "$file" || patch_fail "$name" "$file"
    cat >>"$file" <<EOF

# $MARK: stdc++fs -- gcc < 9.1 keeps std::filesystem in libstdc++fs
if (CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 9.1)
    target_link_libraries(ggml-base PUBLIC stdc++fs)
endif()
EOF
    grep -q 'target_link_libraries(ggml-base PUBLIC stdc++fs)' "$file" \
        || die "patch $name: could not append to $file"
    say "$name: patched $file"
}

patch_constexpr_device() {
    # nvcc 10.2 rejects a constexpr __device__ variable; constexpr functions and the
    # type-traits' static constexpr members in the same file must stay as they are.
    sed_patch constexpr-device "$1/ggml/src/ggml-cuda/common.cuh" \
        '^[[:space:]]*static[[:space:]]+constexpr[[:space:]]+__device__[[:space:]]+int8_t[[:space:]]+kvalues_iq4nl\[16\]' \
        '^[[:space:]]*static[[:space:]]+__device__[[:space:]]+int8_t[[:space:]]+kvalues_iq4nl\[16\]' \
        's/^([[:space:]]*static[[:space:]]+)constexpr[[:space:]]+(__device__[[:space:]]+int8_t[[:space:]]+kvalues_iq4nl\[16\])/\1\2/'
}

patch_builtin_assume() {
    local f
    for f in fattn-common.cuh fattn-vec-f32.cuh fattn-vec-f16.cuh; do
        sed_patch builtin-assume "$1/ggml/src/ggml-cuda/$f" \
            '^[[:space:]]*__builtin_assume\(tid < D\);' \
            '^[[:space:]]*// __builtin_assume\(tid < D\);' \
            "s|^([[:space:]]*)(__builtin_assume\\(tid < D\\);)|\\1// \\2 // $MARK: nvcc 10.2|"
    done
}

patch_bf16_shim() {
    local name=bf16-shim src=$1/ggml/src/ggml-cuda/vendors/cuda.h
    require_file "$name" "$src"
    grep -Eq '^[[:space:]]*#[[:space:]]*include[[:space:]]*<cuda_bf16\.h>' "$src" || patch_fail "$name" "$src"
    write_shim "$name" "$1/$SHIM_DIRNAME/cuda_bf16.h" <<EOF
// $MARK: CUDA 10.2 has no bfloat16 (cuda_bf16.h arrived in 11.0). sm_53 has no bf16
// hardware and the Q4_0 model never takes a bf16 path: the bf16 names only have to compile.
#pragma once
#if defined(CUDART_VERSION) && CUDART_VERSION >= 11000
#include_next <cuda_bf16.h>
#else
#include <cuda_fp16.h>
typedef __half  __nv_bfloat16;
typedef __half2 __nv_bfloat162;
typedef __half  nv_bfloat16;
typedef __half2 nv_bfloat162;
#define __float2bfloat16(x) __float2half(x)
#define __bfloat162float(x) __half2float(x)
#endif
EOF
}

patch_charconv_shim() {
    local name=charconv-shim src=$1/ggml/src/ggml-cuda/ggml-cuda.cu
    require_file "$name" "$src"
    grep -Eq '^[[:space:]]*#[[:space:]]*include[[:space:]]*<charconv>' "$src" || patch_fail "$name" "$src"
    write_shim "$name" "$1/$SHIM_DIRNAME/charconv" <<EOF
// $MARK: <charconv> is C++17; nvcc 10.2 compiles C++14. ggml-cuda.cu needs only
// integer std::from_chars, provided here when the real header is unusable.
#pragma once
#if __cplusplus >= 201703L
#include_next <charconv>
#else
#include <system_error>
#include <type_traits>
#include <limits>
namespace std {
struct from_chars_result { const char * ptr; errc ec; };
template <typename T, typename enable_if<is_integral<T>::value, int>::type = 0>
inline from_chars_result from_chars(const char * first, const char * last, T & value, int base = 10) {
    const char * p = first;
    bool neg = false;
    if (is_signed<T>::value && p != last && *p == '-') { neg = true; ++p; }
    unsigned long long acc = 0;
    const unsigned long long lim = neg ? 0ULL - (unsigned long long) numeric_limits<T>::min()
                                       : (unsigned long long) numeric_limits<T>::max();
    const char * digits = p;
    bool overflow = false;
    for (; p != last; ++p) {
        int d = (*p >= '0' && *p <= '9') ? *p - '0'
              : (*p >= 'a' && *p <= 'z') ? *p - 'a' + 10
              : (*p >= 'A' && *p <= 'Z') ? *p - 'A' + 10 : 99;
        if (d >= base) break;
        if (acc > (lim - d) / base) overflow = true; else acc = acc * base + d;
    }
    if (p == digits) return {first, errc::invalid_argument};
    if (overflow) return {p, errc::result_out_of_range};
    value = neg ? (T) (0ULL - acc) : (T) acc;
    return {p, errc()};
}
}  // namespace std
#endif
EOF
}

neon_fallbacks() {
    cat <<EOF
// $MARK: gcc < 9 lacks vld1q_*_x4 (and some _x2) in arm_neon.h; build them from vld1q_*.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 9
#undef ggml_vld1q_s16_x2
#undef ggml_vld1q_u8_x2
#undef ggml_vld1q_u8_x4
#undef ggml_vld1q_s8_x2
#undef ggml_vld1q_s8_x4
static inline int16x8x2_t ggml_vld1q_s16_x2(const int16_t * p) {
    int16x8x2_t r; r.val[0] = vld1q_s16(p); r.val[1] = vld1q_s16(p + 8); return r;
}
static inline uint8x16x2_t ggml_vld1q_u8_x2(const uint8_t * p) {
    uint8x16x2_t r; r.val[0] = vld1q_u8(p); r.val[1] = vld1q_u8(p + 16); return r;
}
static inline uint8x16x4_t ggml_vld1q_u8_x4(const uint8_t * p) {
    uint8x16x4_t r;
    r.val[0] = vld1q_u8(p); r.val[1] = vld1q_u8(p + 16); r.val[2] = vld1q_u8(p + 32); r.val[3] = vld1q_u8(p + 48);
    return r;
}
static inline int8x16x2_t ggml_vld1q_s8_x2(const int8_t * p) {
    int8x16x2_t r; r.val[0] = vld1q_s8(p); r.val[1] = vld1q_s8(p + 16); return r;
}
static inline int8x16x4_t ggml_vld1q_s8_x4(const int8_t * p) {
    int8x16x4_t r;
    r.val[0] = vld1q_s8(p); r.val[1] = vld1q_s8(p + 16); r.val[2] = vld1q_s8(p + 32); r.val[3] = vld1q_s8(p + 48);
    return r;
}
#endif // $MARK
EOF
}

patch_neon_x4() {
    local name=neon-x4 file=$1/ggml/src/ggml-cpu/ggml-cpu-impl.h block count
    local anchor='^[[:space:]]*#[[:space:]]*define[[:space:]]+ggml_vld1q_s8_x4[[:space:]]+vld1q_s8_x4'
    require_file "$name" "$file"
    if grep -q "$MARK: gcc < 9 lacks vld1q" "$file"; then
        say "$name: already applied ($file)"
        return 0
    fi
    count=$(grep -Ec -- "$anchor" "$file" || true)
    [[ $count != 0 ]] || patch_fail "$name" "$file"
    [[ $count == 1 ]] || die "patch $name: expected one '#define ggml_vld1q_s8_x4 vld1q_s8_x4' in $file, found $count"
    block=$(mktemp)
    neon_fallbacks >"$block"
    sed -E -i "/$anchor/r $block" "$file"
    rm -f "$block"
    if [[ $(grep -c "$MARK: gcc < 9 lacks vld1q" "$file") != 1 ]] \
        || ! grep -q 'static inline int8x16x4_t ggml_vld1q_s8_x4' "$file"; then
        die "patch $name: fallbacks not inserted into $file"
    fi
    say "$name: patched $file"
}

patch_wmma_stub() {
    local name=wmma-stub file=$1/ggml/src/ggml-cuda/fattn-wmma-f16.cu
    local sig='void ggml_cuda_flash_attn_ext_wmma_f16(ggml_backend_cuda_context & ctx, ggml_tensor * dst)'
    require_file "$name" "$file"
    if grep -q "$MARK: wmma stub" "$file"; then
        say "$name: already applied ($file)"
        return 0
    fi
    # The stub must define exactly what the original defines.
    grep -Fq "$sig" "$file" || patch_fail "$name" "$file"
    cat >"$file" <<EOF
// $MARK: wmma stub. The WMMA FlashAttention kernel needs tensor cores (sm_70+) and
// does not compile with nvcc 10.2; the Nano's sm_53 never selects it.
#include "common.cuh"

$sig {
    GGML_UNUSED(ctx);
    GGML_UNUSED(dst);
    GGML_ABORT("fattn-wmma-f16 is stubbed out in this build (CUDA 10.2, sm_53): it needs tensor cores (sm_70+)");
}
EOF
    if ! grep -Fq "$sig" "$file" || ! grep -q 'GGML_ABORT' "$file"; then
        die "patch $name: could not write $file"
    fi
    say "$name: patched $file"
}

# Not a patch: arch 53 comes from -DCMAKE_CUDA_ARCHITECTURES, which only wins because the
# default is set under this guard. Checked again in the cmake cache after configuring.
check_cuda_arch_guard() {
    local file=$1/ggml/src/ggml-cuda/CMakeLists.txt
    require_file cuda-arch "$file"
    grep -Eq 'if[[:space:]]*\([[:space:]]*NOT[[:space:]]+DEFINED[[:space:]]+CMAKE_CUDA_ARCHITECTURES[[:space:]]*\)' "$file" \
        || patch_fail cuda-arch "$file"
    say "cuda-arch: default guarded by 'if (NOT DEFINED CMAKE_CUDA_ARCHITECTURES)' ($file)"
}

apply_patches() {
    local dir=$1
    if [[ $DRY_RUN == 1 ]]; then
        printf '[dry-run] apply and verify the CUDA 10.2 / gcc-8 patches in %s\n' "$dir"
        return 0
    fi
    [[ -d $dir/ggml ]] || die "$dir does not look like a llama.cpp tree (no ggml/)"
    check_cuda_arch_guard "$dir"
    patch_stdcxxfs "$dir"
    patch_constexpr_device "$dir"
    patch_builtin_assume "$dir"
    patch_bf16_shim "$dir"
    patch_charconv_shim "$dir"
    patch_neon_x4 "$dir"
    patch_wmma_stub "$dir"
}

# --------------------------------------------------------------------------------
# Build steps
# --------------------------------------------------------------------------------

preflight_build() {
    step "preflight"
    if [[ $(uname -m) != aarch64 ]]; then
        warn "this is $(uname -m), not the Nano's aarch64"
    fi
    if [[ -x $CUDA_HOME/bin/nvcc ]]; then
        local v
        v=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
        say "nvcc $v ($CUDA_HOME/bin/nvcc)"
        [[ $v == 10.2 ]] || warn "the patches target CUDA 10.2, found $v"
    elif [[ $DRY_RUN == 1 ]]; then
        warn "no nvcc at $CUDA_HOME/bin/nvcc"
    else
        die "no nvcc at $CUDA_HOME/bin/nvcc: install JetPack's CUDA (sudo apt-get install nvidia-jetpack) or set CUDA_HOME"
    fi
    local swap_kb
    swap_kb=$(awk '/^SwapTotal:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
    if ((${swap_kb:-0} < 4000000)); then
        warn "less than 4 GB swap: nvcc may be OOM-killed with -j$JOBS (README: swap, or JOBS=2)"
    fi
}

missing_packages() {
    local p status
    for p in "$@"; do
        # shellcheck disable=SC2016  # ${Status} is dpkg-query's format, not a shell expansion
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == *"ok installed"* ]] || printf '%s\n' "$p"
    done
}

install_deps() {
    step "build dependencies: ${BUILD_DEPS[*]}"
    local missing
    mapfile -t missing < <(missing_packages "${BUILD_DEPS[@]}")
    if ((${#missing[@]} == 0)); then
        say "all installed, skipping"
        return 0
    fi
    say "missing: ${missing[*]}"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

cmake_version() { "$1" --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p'; }

ensure_cmake() {
    step "cmake >= $CMAKE_MIN_VERSION"
    local candidate v
    for candidate in cmake "$CMAKE_VENV/bin/cmake"; do
        v=$(cmake_version "$candidate" || true)
        if [[ -n $v ]] && version_ge "$v" "$CMAKE_MIN_VERSION"; then
            CMAKE=$candidate
            say "using $candidate ($v), skipping"
            return 0
        fi
    done
    say "distro cmake is older; installing cmake==$CMAKE_PIP_VERSION from PyPI into $CMAKE_VENV"
    [[ -x $CMAKE_VENV/bin/python ]] || run python3 -m venv "$CMAKE_VENV"
    run "$CMAKE_VENV/bin/pip" install --quiet --upgrade "$PIP_FOR_PY36"
    run "$CMAKE_VENV/bin/pip" install --quiet "cmake==$CMAKE_PIP_VERSION"
    CMAKE=$CMAKE_VENV/bin/cmake
    [[ $DRY_RUN == 1 ]] || version_ge "$(cmake_version "$CMAKE")" "$CMAKE_MIN_VERSION" \
        || die "$CMAKE does not report a version >= $CMAKE_MIN_VERSION"
}

fetch_source() {
    step "llama.cpp $LLAMA_TAG ($LLAMA_COMMIT) in $BUILD_DIR"
    local head
    if [[ -d $BUILD_DIR/.git ]]; then
        head=$(git -C "$BUILD_DIR" rev-parse HEAD)
        if [[ $head == "$LLAMA_COMMIT"* ]]; then
            say "existing clone is at $LLAMA_COMMIT, reusing it"
            return 0
        fi
        say "existing clone is at ${head:0:9}; switching to $LLAMA_TAG (patches are re-applied)"
        run git -C "$BUILD_DIR" fetch --depth 1 origin tag "$LLAMA_TAG"
        run git -C "$BUILD_DIR" checkout --force "$LLAMA_TAG"
    else
        [[ ! -e $BUILD_DIR ]] || die "$BUILD_DIR exists but is not a git clone: move it away and re-run"
        # Clone beside the target and rename: an interrupted clone never looks like a good one.
        run mkdir -p "$(dirname "$BUILD_DIR")"
        run rm -rf "$BUILD_DIR.partial"
        run git clone --depth 1 --branch "$LLAMA_TAG" "$LLAMA_REPO" "$BUILD_DIR.partial"
        run mv "$BUILD_DIR.partial" "$BUILD_DIR"
    fi
    [[ $DRY_RUN == 1 ]] && return 0
    head=$(git -C "$BUILD_DIR" rev-parse HEAD)
    [[ $head == "$LLAMA_COMMIT"* ]] || die "$LLAMA_TAG is at $head, expected $LLAMA_COMMIT"
}

configure() {
    step "cmake configure: CUDA on, sm_$CUDA_ARCH, gcc-8, Release"
    say "log: $LOG_FILE"
    # Static libraries: the one installed binary needs nothing from the build tree.
    run_logged "$CMAKE" -S "$BUILD_DIR" -B "$BUILD_DIR/build" \
        -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
        -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
        -DCMAKE_CUDA_HOST_COMPILER="$CXX_BIN" \
        -DCMAKE_C_COMPILER="$CC_BIN" \
        -DCMAKE_CXX_COMPILER="$CXX_BIN" \
        -DCMAKE_CUDA_FLAGS="-I$BUILD_DIR/$SHIM_DIRNAME" \
        "${NANO_CMAKE_FLAGS[@]}" \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=ON \
        -DLLAMA_BUILD_TESTS=OFF
    check_configured
}

# CMake's truth values, so that a cache saying ON passes for a flag given as true.
cmake_bool() {
    case ${1^^} in
        1 | ON | YES | TRUE | Y) printf 'ON' ;;
        0 | OFF | NO | FALSE | N) printf 'OFF' ;;
        *) printf '%s' "$1" ;;
    esac
}

# check_cache_entry CACHE NAME EXPECTED WHY: the configured value of NAME must be EXPECTED.
check_cache_entry() {
    local cache=$1 name=$2 want=$3 why=$4 value
    value=$(sed -n -E "s/^$name(:[A-Z]+)?=//p" "$cache")
    [[ $(cmake_bool "$value") == "$(cmake_bool "$want")" ]] \
        || die "$name is '$value' in $cache, expected $want ($why)"
    say "$name=$value"
}

# The cache, not the command line, says what the build will use.
check_configured() {
    local cache=$BUILD_DIR/build/CMakeCache.txt flag name
    if [[ $DRY_RUN == 1 ]]; then
        printf '[dry-run] check CMAKE_CUDA_ARCHITECTURES=%s in %s\n' "$CUDA_ARCH" "$cache"
        for flag in "${NANO_CMAKE_FLAGS[@]}"; do
            printf '[dry-run] check %s in %s\n' "${flag#-D}" "$cache"
        done
        return 0
    fi
    [[ -f $cache ]] || die "no $cache after configuring"
    check_cache_entry "$cache" CMAKE_CUDA_ARCHITECTURES "$CUDA_ARCH" "the Nano's Maxwell GPU"
    for flag in "${NANO_CMAKE_FLAGS[@]}"; do
        name=${flag#-D}
        check_cache_entry "$cache" "${name%%=*}" "${name#*=}" "see NANO_CMAKE_FLAGS in $0"
    done
}

build() {
    step "build llama-server: make -j$JOBS (~85 min on the Nano)"
    say "log: $LOG_FILE  (follow it with: tail -f $LOG_FILE)"
    run_logged make -C "$BUILD_DIR/build" -j"$JOBS" llama-server
    [[ $DRY_RUN == 1 || -x $BUILD_DIR/build/bin/llama-server ]] \
        || die "make finished but $BUILD_DIR/build/bin/llama-server is missing (log: $LOG_FILE)"
}

install_binary() {
    step "install llama-server to $PREFIX_BIN"
    run mkdir -p "$PREFIX_BIN"
    # Copy then rename: a half-copied binary would make the next run skip the build.
    run install -m 0755 "$BUILD_DIR/build/bin/llama-server" "$PREFIX_BIN/.llama-server.new"
    run mv -f "$PREFIX_BIN/.llama-server.new" "$PREFIX_BIN/llama-server"
    say "installed $PREFIX_BIN/llama-server"
    RESTART_NEEDED=1
}

# Prints "SIZE SHA256" as Hugging Face announces them (either may be empty).
model_expected_from_headers() {
    curl -fsSIL --retry 3 "$MODEL_URL" | tr -d '\r' | awk '
        tolower($1) == "x-linked-size:" { size = $2 }
        tolower($1) == "x-linked-etag:" { gsub(/"/, "", $2); sha = $2 }
        tolower($1) == "content-length:" { len = $2 }
        END { if (size == "") size = len; print size, sha }'
}

file_size() { stat -c %s "$1"; }

download_model() {
    step "model $MODEL_FILE in $MODEL_DIR"
    local dest=$MODEL_DIR/$MODEL_FILE part stamp actual
    part=$dest.part
    stamp=$dest.sha256
    if [[ -f $dest && -f $stamp ]] && [[ -z $MODEL_SHA256 || "$(cat "$stamp")" == "$MODEL_SHA256" ]]; then
        say "present and verified ($(cat "$stamp")), skipping"
        return 0
    fi
    if [[ -z $MODEL_SIZE || -z $MODEL_SHA256 ]]; then
        if [[ $DRY_RUN == 1 ]]; then
            printf '[dry-run] %s\n' "$(quote curl -fsSIL --retry 3 "$MODEL_URL")"
        else
            local size sha
            read -r size sha < <(model_expected_from_headers || true) || true
            MODEL_SIZE=${MODEL_SIZE:-$size}
            [[ $sha =~ ^[0-9a-f]{64}$ ]] && MODEL_SHA256=${MODEL_SHA256:-$sha}
            [[ -n $MODEL_SIZE ]] || die "could not learn the size of $MODEL_URL; set MODEL_SIZE and MODEL_SHA256"
            [[ -n $MODEL_SHA256 ]] || warn "no sha256 known for $MODEL_FILE: checking its size only"
        fi
    fi
    run mkdir -p "$MODEL_DIR"
    if [[ -f $dest ]]; then
        say "verifying $dest (no matching checksum stamp)"
        part=$dest
    elif [[ -f $part && $(file_size "$part") == "$MODEL_SIZE" ]]; then
        say "download already complete ($part)"
    else
        [[ -f $part ]] && say "resuming $part"
        run curl -fL --retry 5 --retry-delay 10 -C - -o "$part" "$MODEL_URL"
    fi
    [[ $DRY_RUN == 1 ]] && return 0
    actual=$(file_size "$part")
    [[ $actual == "$MODEL_SIZE" ]] \
        || die "$part is $actual bytes, expected $MODEL_SIZE: re-run to resume (delete it if it keeps failing)"
    if [[ -n $MODEL_SHA256 ]]; then
        actual=$(file_sha256 "$part")
        if [[ $actual != "$MODEL_SHA256" ]]; then
            rm -f "$part"
            die "sha256 of $MODEL_FILE is $actual, expected $MODEL_SHA256: removed it, re-run to download again"
        fi
    fi
    [[ $part == "$dest" ]] || mv -f "$part" "$dest"
    printf '%s\n' "${MODEL_SHA256:-size:$MODEL_SIZE}" | write_file "$stamp" 0644
    say "verified $dest"
    RESTART_NEEDED=1
}

ensure_user() {
    local user=$1
    if getent passwd "$user" >/dev/null; then
        say "system user $user exists"
        return 0
    fi
    run useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$user"
}

render_unit() {
    sed -e "s|/usr/local/bin/llama-server|$PREFIX_BIN/llama-server|" \
        -e "s|/opt/llama-models/[^ ]*\.gguf|$MODEL_DIR/$MODEL_FILE|" "$UNIT_SRC"
}

install_unit() {
    step "llama-server.service"
    if [[ ! -f $UNIT_SRC ]]; then
        say "no $UNIT_SRC beside this script; skipping (copy it here and re-run)"
        return 0
    fi
    ensure_user "$LLAMA_USER"
    local dest=$UNIT_DIR/llama-server.service rendered
    rendered=$(render_unit)
    grep -qF -- "-m $MODEL_DIR/$MODEL_FILE" <<<"$rendered" \
        || die "$UNIT_SRC: ExecStart has no '-m /opt/llama-models/<file>.gguf' to point at $MODEL_FILE"
    if [[ -f $dest && "$(cat "$dest")" == "$rendered" ]]; then
        say "$dest is up to date"
    else
        write_file "$dest" 0644 <<<"$rendered"
        say "installed $dest"
        run systemctl daemon-reload
        RESTART_NEEDED=1
    fi
    systemctl is-enabled --quiet llama-server 2>/dev/null || run systemctl enable llama-server
    if [[ $RESTART_NEEDED == 1 ]]; then
        run systemctl restart llama-server
    elif ! systemctl is-active --quiet llama-server; then
        run systemctl start llama-server
    else
        say "llama-server is running"
    fi
}

main() {
    parse_args "$@"
    if [[ -n $PATCH_ONLY ]]; then
        step "patches (CUDA 10.2 / gcc-8) in $PATCH_ONLY"
        apply_patches "$PATCH_ONLY"
        exit 0
    fi
    if [[ $(id -u) != 0 && $DRY_RUN != 1 && $ALLOW_NON_ROOT != 1 ]]; then
        die "run as root: sudo $0 $*"
    fi
    if [[ -x $PREFIX_BIN/llama-server && $FORCE == 0 ]]; then
        step "llama-server"
        say "$PREFIX_BIN/llama-server is installed, skipping the build (--force rebuilds)"
    else
        preflight_build
        install_deps
        ensure_cmake
        fetch_source
        step "patches (CUDA 10.2 / gcc-8) in $BUILD_DIR"
        apply_patches "$BUILD_DIR"
        configure
        build
        install_binary
    fi
    download_model
    install_unit
    step "done: check with 'systemctl is-active llama-server' and 'curl -s 127.0.0.1:8080/health'"
}

main "$@"
