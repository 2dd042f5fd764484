#!/usr/bin/env bash
# Drive the Jetson Nano from a dev machine over ssh/scp.
#
#   JETSON_HOST=nano.local [JETSON_USER=me] jetson/deploy.sh COMMAND [ARGS]
#
#   build-llamacpp [--force]    copy build-llamacpp.sh, lib.sh and the unit, run it (~90 min)
#   install [--jetson-clocks]   build a pollex wheel, copy it with the installer and monitoring/, run it
#   status                      systemctl is-active of both services, then /api/health
#   logs [-f] [LINES]           journal of both services
#
# The remote steps run with sudo (you may be asked for the Nano's password). Every step
# on the Nano is idempotent: after a dropped connection, run the same command again.
# DRY_RUN=1 prints the ssh/scp/build commands instead of running them.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$SCRIPT_DIR/lib.sh"   # step say warn die quote run write_file file_sha256

REPO_ROOT="${REPO_ROOT:-$(cd "$SCRIPT_DIR/.." && pwd)}"
JETSON_HOST="${JETSON_HOST:-}"
JETSON_USER="${JETSON_USER:-$(id -un)}"
REMOTE_DIR="${REMOTE_DIR:-pollex-deploy}"        # relative to the remote user's home
HEALTH_URL="${HEALTH_URL:-http://127.0.0.1:8090/api/health}"
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"

usage() { sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

target() { printf '%s@%s' "$JETSON_USER" "$JETSON_HOST"; }

# remote [-t] ARGS...: run one command on the Nano, arguments quoted for the remote shell.
# -t gives it a terminal, so sudo can ask for the password and the build output streams.
remote() {
    local opts=() cmd
    if [[ $1 == -t ]]; then
        opts=(-t)
        shift
    fi
    cmd=$(quote "$@")
    if [[ $DRY_RUN == 1 ]]; then
        printf '[dry-run] ssh %s%s %s\n' "${opts[*]:+${opts[*]} }" "$(target)" "$cmd"
        return 0
    fi
    # shellcheck disable=SC2029  # expanding here is the point: $cmd is already quoted
    ssh ${opts[@]+"${opts[@]}"} "$(target)" "$cmd"
}

copy_to_nano() {
    step "copy $(printf '%s ' "${@##*/}")to $(target):$REMOTE_DIR/"
    remote mkdir -p "$REMOTE_DIR"
    # -r for monitoring/: a directory lands as $REMOTE_DIR/monitoring, replacing its files.
    run scp -q -r "$@" "$(target):$REMOTE_DIR/"
}

cmd_build_llamacpp() {
    copy_to_nano "$SCRIPT_DIR/build-llamacpp.sh" "$SCRIPT_DIR/lib.sh" "$SCRIPT_DIR/llama-server.service"
    step "build llama-server on $JETSON_HOST (~90 min the first time; log path printed below)"
    remote -t sudo bash "$REMOTE_DIR/build-llamacpp.sh" "$@"
}

build_wheel() {
    local dist=$1
    if "$PYTHON" -c 'import build' 2>/dev/null; then
        run "$PYTHON" -m build --wheel --outdir "$dist" "$REPO_ROOT" >&2
    else
        run "$PYTHON" -m pip wheel --no-deps --wheel-dir "$dist" "$REPO_ROOT" >&2
    fi
}

cmd_install() {
    local dist wheels
    step "build the pollex wheel from $REPO_ROOT"
    if [[ $DRY_RUN == 1 ]]; then
        dist=${TMPDIR:-/tmp}/pollex-wheel.XXXXXX
        build_wheel "$dist"
        wheels=("$dist/pollex-VERSION-py3-none-any.whl")
    else
        dist=$(mktemp -d)
        build_wheel "$dist"
        shopt -s nullglob
        wheels=("$dist"/pollex-*.whl)
        shopt -u nullglob
        ((${#wheels[@]} == 1)) || die "expected one pollex wheel in $dist, found ${#wheels[@]}"
    fi
    copy_to_nano "$SCRIPT_DIR/install-pollex.sh" "$SCRIPT_DIR/lib.sh" "$SCRIPT_DIR/config.yaml" \
        "$SCRIPT_DIR/pollex.service" "$SCRIPT_DIR/jetson-clocks.service" "$SCRIPT_DIR/monitoring" \
        "${wheels[0]}"
    step "install pollex on $JETSON_HOST"
    remote -t sudo bash "$REMOTE_DIR/install-pollex.sh" "$@" "$REMOTE_DIR/${wheels[0]##*/}"
    [[ $DRY_RUN == 1 ]] || rm -rf "$dist"
}

cmd_status() {
    step "status of $JETSON_HOST"
    # One remote sh script; its exit status says whether everything is up.
    # shellcheck disable=SC2016  # expanded on the Nano
    local script='rc=0
for u in llama-server pollex; do
    s=$(systemctl is-active "$u.service") || rc=1
    printf "%-13s %s\n" "$u" "$s"
done
printf "health        "
curl -sS --max-time 5 -w "  (HTTP %{http_code})" "$1" || rc=1
echo
exit $rc'
    run ssh "$(target)" sh -s -- "$(quote "$HEALTH_URL")" <<<"$script"
}

cmd_logs() {
    local follow=() lines=200
    while (($#)); do
        case $1 in
            -f) follow=(-f) ;;
            *[!0-9]* | '') die "logs: unknown argument $1" ;;
            *) lines=$1 ;;
        esac
        shift
    done
    # ${a[@]+...}: an empty array under set -u breaks macOS's bash 3.2.
    remote journalctl --no-pager -u llama-server.service -u pollex.service -n "$lines" ${follow[@]+"${follow[@]}"}
}

main() {
    (($#)) || { usage; exit 2; }
    local cmd=$1
    shift
    case $cmd in
        -h | --help | help) usage; exit 0 ;;
    esac
    [[ -n $JETSON_HOST ]] || die "set JETSON_HOST (and JETSON_USER if it is not $(id -un))"
    case $cmd in
        build-llamacpp) cmd_build_llamacpp "$@" ;;
        install) cmd_install "$@" ;;
        status) cmd_status ;;
        logs) cmd_logs "$@" ;;
        *) die "unknown command: $cmd (see --help)" ;;
    esac
}

main "$@"
