"""Sandbox for running the jetson/ shell scripts on a CI machine with no Jetson.

A test gets a `Sandbox`: a PATH made of logging stubs (apt-get, git, cmake, make, curl,
systemctl, ...) followed by links to a short list of harmless real tools (bash,
coreutils, sed, grep, awk, tar). Nothing else from the host is reachable, so a script
that calls an unstubbed program fails instead of touching the machine. The stubs keep
their state (installed packages, users, enabled units) under tmp_path, so a second run
of a script sees what the first one did.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import words

REPO = Path(__file__).resolve().parents[2]
JETSON = REPO / "jetson"
FIXTURE_TREE = Path(__file__).resolve().parent / "fixtures" / "llama.cpp-b5050"
PINNED_COMMIT = "23106f94ea2bc3da929afb7330655fd5515d08dc"

REAL_TOOLS = words("""
    bash sh env cat cp mv rm mkdir rmdir ln chmod install stat sha256sum sed grep awk tr
    head tail cut sort date id basename dirname readlink realpath mktemp touch cmp diff tee
    wc find uname tar gzip xargs true false printf test ls sleep
""")

# Every stub starts by logging its name (or $STUB_NAME) and arguments.
LOG = 'printf "%s\\n" "${STUB_NAME:-$(basename "$0")} $*" >>"$STUB_LOG"\n'

STUBS = {
    "apt-get": r"""
if [[ " $* " == *" install "* ]]; then
    for a in "$@"; do
        case $a in -* | install) ;; *) touch "$STUB_STATE/dpkg/$a" ;; esac
    done
fi
""",
    "dpkg-query": r"""
pkg=${!#}
if [[ ! -f $STUB_STATE/dpkg/$pkg ]]; then
    echo "dpkg-query: no packages found matching $pkg" >&2
    exit 1
fi
printf 'install ok installed'
""",
    "git": r"""
case $1 in
    clone)
        dest=${!#}
        cp -r "$STUB_FIXTURE_TREE" "$dest"
        mkdir -p "$dest/.git"
        echo "$STUB_GIT_HEAD" >"$dest/.git/STUB_HEAD" ;;
    -C)
        dir=$2
        case $3 in
            rev-parse) cat "$dir/.git/STUB_HEAD" ;;
            checkout) echo "$STUB_GIT_HEAD" >"$dir/.git/STUB_HEAD" ;;
        esac ;;
esac
""",
    "python3": r"""
if [[ $1 == -m && $2 == venv ]]; then
    mkdir -p "$3/bin"
    cp "$STUB_DIR/_templates/pip" "$3/bin/pip"
    cp "$STUB_DIR/_templates/python" "$3/bin/python"
elif [[ $1 == -c ]]; then
    exit 0   # "import build" succeeds
elif [[ $1 == -m && $2 == build ]]; then
    while (($#)); do [[ $1 == --outdir ]] && out=$2; shift; done
    mkdir -p "$out"
    echo wheel >"$out/pollex-1.0.0-py3-none-any.whl"
fi
""",
    "cmake": r"""
if [[ $1 == --version ]]; then
    echo "cmake version ${STUB_CMAKE_VERSION:-3.10.2}"
    exit 0
fi
# Every -DNAME=VALUE lands in the cache, as with the real cmake. A test makes the cache
# disagree with STUB_CONFIGURED_ARCH, STUB_CACHE_<NAME>=VALUE, or STUB_CACHE_DROP=NAME.
build="" cache=""
while (($#)); do
    case $1 in
        -B) build=$2; shift ;;
        -D*=*)
            name=${1#-D} value=${1#*=}
            name=${name%%=*}
            [[ $name == CMAKE_CUDA_ARCHITECTURES ]] && value=${STUB_CONFIGURED_ARCH:-$value}
            override=STUB_CACHE_$name
            value=${!override:-$value}
            [[ $name == "${STUB_CACHE_DROP:-}" ]] || cache+="$name:STRING=$value"$'\n' ;;
    esac
    shift
done
mkdir -p "$build"
printf '%s' "$cache" >"$build/CMakeCache.txt"
echo "-- Configuring done"
""",
    "make": r"""
[[ $1 == -C ]] || exit 2
mkdir -p "$2/bin"
printf '#!/bin/sh\necho fake llama-server\n' >"$2/bin/llama-server"
chmod +x "$2/bin/llama-server"
echo "[100%] Built target llama-server"
""",
    "curl": r"""
head=0 out="" prev=""
for a in "$@"; do
    [[ $a == -[!-]*I* ]] && head=1
    [[ $prev == -o ]] && out=$a
    prev=$a
done
url=${!#}
if ((head)); then
    printf 'HTTP/1.1 302 Found\r\nx-linked-size: %s\r\n' "$STUB_MODEL_SIZE"
    printf 'x-linked-etag: "%s"\r\n\r\n' "$STUB_MODEL_SHA"
    printf 'HTTP/1.1 200 OK\r\ncontent-length: %s\r\n\r\n' "$STUB_MODEL_SIZE"
    exit 0
fi
if [[ -n $out ]]; then
    case $url in
        *.tar.gz.sha256) src=$STUB_UV_TARBALL.sha256 ;;
        *.tar.gz) src=$STUB_UV_TARBALL ;;
        *) src=$STUB_MODEL_SRC ;;
    esac
    have=0
    [[ -f $out ]] && have=$(stat -c %s "$out")
    tail -c +$((have + 1)) "$src" >>"$out"   # resume like -C -
    exit 0
fi
echo '{"status": "ok"}'
""",
    "getent": r"""
[[ $1 == passwd && -f $STUB_STATE/users/$2 ]]
""",
    "useradd": r"""
touch "$STUB_STATE/users/${!#}"
""",
    "chown": "",
    "sudo": 'exec "$@"\n',
    "systemctl": r"""
cmd="" unit=""
for a in "$@"; do
    case $a in
        -*) ;;
        *) if [[ -z $cmd ]]; then cmd=$a; else unit=${a%.service}; fi ;;
    esac
done
case $cmd in
    is-enabled) [[ -f $STUB_STATE/enabled/$unit ]] ;;
    is-active) [[ -f $STUB_STATE/active/$unit ]] ;;
    enable) touch "$STUB_STATE/enabled/$unit" ;;
    start | restart) touch "$STUB_STATE/active/$unit" ;;
esac
""",
    "ssh": r"""
if [[ " $* " == *" sh -s "* ]]; then cat >"$STUB_STATE/ssh-stdin"; fi
""",
    "scp": "",
}

TEMPLATES = {
    "pip": r"""
for a in "$@"; do
    if [[ $a == cmake==* ]]; then
        printf '#!/bin/bash\nSTUB_NAME=venv-cmake STUB_CMAKE_VERSION=%s exec "%s/cmake" "$@"\n' \
            "${a#cmake==}" "$STUB_DIR" >"$(dirname "$0")/cmake"
        chmod +x "$(dirname "$0")/cmake"
    fi
done
""",
    "python": "",
    "nvcc": r"""
echo "Cuda compilation tools, release 10.2, V10.2.300"
""",
    "uv": r"""
case $1 in
    --version) echo "uv ${STUB_UV_VERSION:-0.8.24} (stub)" ;;
    python)
        case $2 in
            find) [[ -f $STUB_STATE/python-$3 ]] || exit 2; echo "/managed/python$3" ;;
            install) touch "$STUB_STATE/python-$3" ;;
        esac ;;
    venv)
        dir=${!#}
        mkdir -p "$dir/bin"
        printf 'home = /managed\nversion_info = %s.7\n' "$3" >"$dir/pyvenv.cfg"
        printf '#!/bin/sh\n' >"$dir/bin/python"
        chmod +x "$dir/bin/python" ;;
    pip)
        while (($#)); do [[ $1 == --python ]] && py=$2; shift; done
        printf '#!/bin/sh\n' >"$(dirname "$py")/pollex"
        chmod +x "$(dirname "$py")/pollex" ;;
esac
""",
}


def _write_exec(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\n" + LOG + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.root / "stub.log"

    def log(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def clear_log(self) -> None:
        self.log_path.write_text("")

    def run(
        self, script: str | Path, *args: str, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **extra_env}
        return subprocess.run(
            ["bash", str(script), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )

    def run_ok(
        self, script: str | Path, *args: str, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        """`run`, which must exit 0 (its output is the failure's message)."""
        result = self.run(script, *args, **extra_env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def path(self, name: str) -> Path:
        return self.root / name


def make_sandbox(tmp_path: Path) -> Sandbox:
    root = tmp_path
    stub_dir = root / "stubs"
    real_dir = root / "realbin"
    state = root / "state"
    for d in (
        stub_dir,
        real_dir,
        state / "dpkg",
        state / "users",
        state / "enabled",
        state / "active",
        root / "tmp",
    ):
        d.mkdir(parents=True, exist_ok=True)
    for name, body in STUBS.items():
        _write_exec(stub_dir / name, body)
    for name, body in TEMPLATES.items():
        _write_exec(stub_dir / "_templates" / name, body)
    for tool in REAL_TOOLS:
        found = shutil.which(tool)
        if found and not (real_dir / tool).exists():
            (real_dir / tool).symlink_to(found)

    model = root / "model-src.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    env = {
        "PATH": f"{stub_dir}:{real_dir}",
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "LC_ALL": "C",
        "STUB_DIR": str(stub_dir),
        "STUB_LOG": str(root / "stub.log"),
        "STUB_STATE": str(state),
        "STUB_FIXTURE_TREE": str(FIXTURE_TREE),
        "STUB_GIT_HEAD": PINNED_COMMIT,
        "STUB_MODEL_SRC": str(model),
        "STUB_MODEL_SIZE": str(model.stat().st_size),
        "STUB_MODEL_SHA": hashlib.sha256(model.read_bytes()).hexdigest(),
        "ALLOW_NON_ROOT": "1",
    }
    return Sandbox(root=root, env=env)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


@pytest.fixture
def build_sandbox(sandbox: Sandbox) -> Sandbox:
    """Environment for jetson/build-llamacpp.sh with every path under tmp_path."""
    r = sandbox.root
    _write_exec(r / "cuda" / "bin" / "nvcc", TEMPLATES["nvcc"])
    sandbox.env.update(
        {
            "BUILD_DIR": str(r / "opt" / "llama.cpp-build"),
            "TOOLS_DIR": str(r / "opt" / "llama.cpp-tools"),
            "PREFIX_BIN": str(r / "usr" / "local" / "bin"),
            "MODEL_DIR": str(r / "opt" / "llama-models"),
            "UNIT_DIR": str(r / "etc" / "systemd" / "system"),
            "CUDA_HOME": str(r / "cuda"),
            "MODEL_URL": "https://models.invalid/qwen.gguf",
        }
    )
    return sandbox


@pytest.fixture
def install_sandbox(sandbox: Sandbox) -> Sandbox:
    """Environment for jetson/install-pollex.sh: uv comes from a stub release tarball."""
    r = sandbox.root
    uv_src = r / "uv-src" / "uv-aarch64-unknown-linux-musl"
    _write_exec(uv_src / "uv", TEMPLATES["uv"])
    tarball = r / "uv-release.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(uv_src, arcname="uv-aarch64-unknown-linux-musl")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    Path(f"{tarball}.sha256").write_text(f"{digest}  uv-aarch64-unknown-linux-musl.tar.gz\n")
    package = r / "dist" / "pollex-1.0.0-py3-none-any.whl"
    package.parent.mkdir()
    package.write_bytes(b"wheel v1")
    sandbox.env.update(
        {
            "STUB_UV_TARBALL": str(tarball),
            "TOOLS_BIN": str(r / "opt" / "pollex-tools" / "bin"),
            "PYTHON_DIR": str(r / "opt" / "pollex-python"),
            "PREFIX": str(r / "opt" / "pollex"),
            "CONF_DIR": str(r / "etc" / "pollex"),
            "MONITORING_DIR": str(r / "etc" / "pollex-monitoring"),
            "UNIT_DIR": str(r / "etc" / "systemd" / "system"),
            "HEALTH_WAIT_S": "1",
        }
    )
    return sandbox
