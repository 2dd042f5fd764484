#!/usr/bin/env bash
# Install pollex on the Jetson Nano (JetPack 4.6 / Ubuntu 18.04 aarch64): a Python >= 3.10
# managed by uv, a venv in /opt/pollex, the config in /etc/pollex, a system user and
# pollex.service (plus, with --jetson-clocks, jetson-clocks.service).
#
#   sudo ./install-pollex.sh [--jetson-clocks] [--dry-run] PACKAGE
#
# PACKAGE is a pollex wheel or sdist copied to the Nano (deploy.sh install does this).
# lib.sh, config.yaml, the .service files and monitoring/ (Prometheus and Grafana files,
# installed to /etc/pollex-monitoring) are taken from beside this script.
# Idempotent: re-running with the same package changes nothing. DRY_RUN=1 (or --dry-run)
# prints the commands that would change the system; every path can be overridden from
# the environment.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$SCRIPT_DIR/lib.sh"   # step say warn die quote run write_file file_sha256

PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
# uv's standalone binary, not `pip3 install --user uv`: JetPack's python3 is 3.6, PyPI's uv
# needs Python >= 3.8, and Ubuntu's pip 9 cannot even read the wheels' manylinux tags. The
# static musl build (the same binary PyPI ships for aarch64) does not care about glibc 2.27,
# and `uv python install` fetches a prebuilt CPython (python-build-standalone, glibc >= 2.17
# builds, chosen for the host's libc): nothing is compiled on the Nano.
UV_VERSION="${UV_VERSION:-0.8.24}"
UV_TARGET="${UV_TARGET:-aarch64-unknown-linux-musl}"
UV_URL="${UV_URL:-https://github.com/astral-sh/uv/releases/download/$UV_VERSION/uv-$UV_TARGET.tar.gz}"
TOOLS_BIN="${TOOLS_BIN:-/opt/pollex-tools/bin}"
PYTHON_DIR="${PYTHON_DIR:-/opt/pollex-python}"   # readable by the pollex user, unlike /root
PREFIX="${PREFIX:-/opt/pollex}"
CONF_DIR="${CONF_DIR:-/etc/pollex}"
# Not under /etc/pollex (0750, group pollex): Prometheus and Grafana run as users of their own.
MONITORING_DIR="${MONITORING_DIR:-/etc/pollex-monitoring}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
POLLEX_USER="${POLLEX_USER:-pollex}"
HEALTH_URL="${HEALTH_URL:-http://127.0.0.1:8090/api/health}"
HEALTH_WAIT_S="${HEALTH_WAIT_S:-30}"

DRY_RUN="${DRY_RUN:-0}"
ALLOW_NON_ROOT="${ALLOW_NON_ROOT:-0}"
JETSON_CLOCKS=0
PACKAGE=""
RESTART_NEEDED=0
UV=$TOOLS_BIN/uv
TMP_DIR=""
trap '[[ -z $TMP_DIR ]] || rm -rf "$TMP_DIR"' EXIT

export UV_PYTHON_INSTALL_DIR=$PYTHON_DIR
export UV_PYTHON_PREFERENCE=only-managed

usage() { sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

parse_args() {
    while (($#)); do
        case $1 in
            --jetson-clocks) JETSON_CLOCKS=1 ;;
            --dry-run) DRY_RUN=1 ;;
            -h | --help) usage; exit 0 ;;
            -*) die "unknown option: $1 (see --help)" ;;
            *) [[ -z $PACKAGE ]] || die "one package only"; PACKAGE=$1 ;;
        esac
        shift
    done
    [[ -n $PACKAGE ]] || die "usage: $0 [--jetson-clocks] PACKAGE (a pollex wheel or sdist)"
    [[ -f $PACKAGE ]] || die "no such package: $PACKAGE"
    case $PACKAGE in
        *.whl | *.tar.gz) ;;
        *) die "$PACKAGE is neither a wheel (.whl) nor an sdist (.tar.gz)" ;;
    esac
    PACKAGE=$(cd "$(dirname "$PACKAGE")" && pwd)/$(basename "$PACKAGE")
}

preflight() {
    step "preflight"
    if [[ $(id -u) != 0 && $DRY_RUN != 1 && $ALLOW_NON_ROOT != 1 ]]; then
        die "run as root: sudo $0 ..."
    fi
    local f
    for f in config.yaml pollex.service; do
        [[ -f $SCRIPT_DIR/$f ]] || die "missing $SCRIPT_DIR/$f (copy the whole jetson/ directory)"
    done
    say "package: $PACKAGE"
}

install_uv() {
    step "uv $UV_VERSION in $TOOLS_BIN"
    if [[ -x $UV ]] && [[ "$("$UV" --version 2>/dev/null)" == "uv $UV_VERSION"* ]]; then
        say "installed, skipping"
        return 0
    fi
    if [[ $DRY_RUN == 1 ]]; then
        printf '[dry-run] %s\n' "$(quote curl -fsSL -o "uv-$UV_TARGET.tar.gz" "$UV_URL")"
        printf '[dry-run] install uv to %s\n' "$UV"
        return 0
    fi
    local tmp expected actual
    tmp=$(mktemp -d)
    TMP_DIR=$tmp
    curl -fsSL --retry 3 -o "$tmp/uv.tar.gz" "$UV_URL"
    curl -fsSL --retry 3 -o "$tmp/uv.tar.gz.sha256" "$UV_URL.sha256"
    expected=$(cut -d' ' -f1 <"$tmp/uv.tar.gz.sha256")
    actual=$(file_sha256 "$tmp/uv.tar.gz")
    [[ $actual == "$expected" ]] || die "uv download: sha256 $actual, expected $expected ($UV_URL)"
    tar -xzf "$tmp/uv.tar.gz" -C "$tmp"
    [[ -f $tmp/uv-$UV_TARGET/uv ]] || die "uv-$UV_TARGET/uv not found in $UV_URL"
    mkdir -p "$TOOLS_BIN"
    install -m 0755 "$tmp/uv-$UV_TARGET/uv" "$UV.new"
    mv -f "$UV.new" "$UV"
    say "installed $("$UV" --version)"
    rm -rf "$tmp"
}

install_python() {
    step "Python $PYTHON_VERSION in $PYTHON_DIR"
    if [[ -x $UV ]] && "$UV" python find "$PYTHON_VERSION" >/dev/null 2>&1; then
        say "installed, skipping"
        return 0
    fi
    run "$UV" python install "$PYTHON_VERSION"
}

venv_matches() {
    [[ -x $PREFIX/bin/python && -f $PREFIX/pyvenv.cfg ]] \
        && grep -Eq "^version(_info)?[[:space:]]*=[[:space:]]*${PYTHON_VERSION//./\\.}\." "$PREFIX/pyvenv.cfg"
}

create_venv() {
    step "venv $PREFIX (Python $PYTHON_VERSION)"
    if venv_matches; then
        say "exists, skipping"
        return 0
    fi
    [[ ! -e $PREFIX ]] || say "replacing $PREFIX (not a Python $PYTHON_VERSION venv)"
    run rm -rf "$PREFIX"
    run "$UV" venv --python "$PYTHON_VERSION" "$PREFIX"
}

install_package() {
    step "pollex from $(basename "$PACKAGE")"
    local stamp=$PREFIX/.pollex-package.sha256 sha
    sha=$(file_sha256 "$PACKAGE")
    if [[ -f $stamp && "$(cat "$stamp")" == "$sha" && -x $PREFIX/bin/pollex ]]; then
        say "this package is installed, skipping"
        return 0
    fi
    run "$UV" pip install --python "$PREFIX/bin/python" --reinstall-package pollex "$PACKAGE"
    [[ $DRY_RUN == 1 || -x $PREFIX/bin/pollex ]] || die "installed $PACKAGE but $PREFIX/bin/pollex is missing"
    printf '%s\n' "$sha" | write_file "$stamp" 0644
    RESTART_NEEDED=1
}

ensure_user() {
    step "system user $POLLEX_USER"
    if getent passwd "$POLLEX_USER" >/dev/null; then
        say "exists, skipping"
        return 0
    fi
    run useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$POLLEX_USER"
}

install_config() {
    step "config in $CONF_DIR"
    run mkdir -p "$CONF_DIR"
    run chmod 0750 "$CONF_DIR"
    run chown "root:$POLLEX_USER" "$CONF_DIR"
    if [[ -f $CONF_DIR/config.yaml ]]; then
        say "$CONF_DIR/config.yaml exists, keeping it (defaults: $SCRIPT_DIR/config.yaml)"
    else
        write_file "$CONF_DIR/config.yaml" 0640 <"$SCRIPT_DIR/config.yaml"
        run chown "root:$POLLEX_USER" "$CONF_DIR/config.yaml"
        say "installed $CONF_DIR/config.yaml"
        RESTART_NEEDED=1
    fi
    if [[ -f $CONF_DIR/secrets.env ]]; then
        say "$CONF_DIR/secrets.env exists, keeping it"
    else
        # Read by systemd (as root) before it drops to the pollex user: root-only.
        write_file "$CONF_DIR/secrets.env" 0600 <<'EOF'
# Secrets for pollex.service (KEY=value lines, read by systemd as root).
# POLLEX_API_KEY=change-me
# POLLEX_CLAUDE_API_KEY=sk-ant-...
EOF
        run chown root:root "$CONF_DIR/secrets.env"
        say "created $CONF_DIR/secrets.env (root only): put POLLEX_API_KEY=... there to require a key"
    fi
}

# install_unit NAME: copy NAME from beside this script if it differs; 0 when it changed.
# The kit's own files: replaced when they differ. prometheus.yml is the user's (host label,
# alerting): copied once, never overwritten, like config.yaml.
MONITORING_KIT_FILES=(
    alerts.yml
    alerts.test.yml
    grafana/dashboards/pollex.json
    grafana/provisioning/dashboards/pollex.yml
    grafana/provisioning/datasources/pollex.yml
)

install_monitoring() {
    step "monitoring files in $MONITORING_DIR"
    local src=$SCRIPT_DIR/monitoring f changed=0 saved_umask
    if [[ ! -d $src ]]; then
        say "no $src beside this script; skipping (copy the whole jetson/ directory)"
        return 0
    fi
    for f in prometheus.yml "${MONITORING_KIT_FILES[@]}"; do
        [[ -f $src/$f ]] || die "missing $src/$f (copy the whole jetson/ directory)"
    done
    # Directories made here (write_file makes the grafana/ ones) are readable by everyone,
    # whatever umask sudo passed on.
    saved_umask=$(umask)
    umask 022
    run install -d -m 0755 "$MONITORING_DIR"
    if [[ -f $MONITORING_DIR/prometheus.yml ]]; then
        say "$MONITORING_DIR/prometheus.yml exists, keeping it (defaults: $src/prometheus.yml)"
    else
        write_file "$MONITORING_DIR/prometheus.yml" 0644 <"$src/prometheus.yml"
        say "installed $MONITORING_DIR/prometheus.yml"
    fi
    for f in "${MONITORING_KIT_FILES[@]}"; do
        if [[ -f $MONITORING_DIR/$f ]] && cmp -s "$src/$f" "$MONITORING_DIR/$f"; then
            say "$MONITORING_DIR/$f is up to date"
            continue
        fi
        write_file "$MONITORING_DIR/$f" 0644 <"$src/$f"
        say "installed $MONITORING_DIR/$f"
        changed=1
    done
    umask "$saved_umask"
    if ((changed)); then
        say "changed: a Prometheus or Grafana using them needs: sudo systemctl reload prometheus; sudo systemctl restart grafana-server"
    fi
}

install_unit() {
    local name=$1 dest=$UNIT_DIR/$1
    if [[ -f $dest ]] && cmp -s "$SCRIPT_DIR/$name" "$dest"; then
        say "$dest is up to date"
        return 1
    fi
    write_file "$dest" 0644 <"$SCRIPT_DIR/$name"
    say "installed $dest"
    run systemctl daemon-reload
    return 0
}

enable_unit() {
    systemctl is-enabled --quiet "$1" 2>/dev/null || run systemctl enable "$1"
}

install_units() {
    step "systemd units"
    if install_unit pollex.service; then RESTART_NEEDED=1; fi
    enable_unit pollex.service
    if [[ $JETSON_CLOCKS == 1 ]]; then
        [[ -f $SCRIPT_DIR/jetson-clocks.service ]] || die "missing $SCRIPT_DIR/jetson-clocks.service"
        install_unit jetson-clocks.service || true
        enable_unit jetson-clocks.service
        systemctl is-active --quiet jetson-clocks.service || run systemctl start jetson-clocks.service
    fi
}

start_pollex() {
    step "pollex.service"
    if [[ $RESTART_NEEDED == 1 ]]; then
        run systemctl restart pollex.service
    elif ! systemctl is-active --quiet pollex.service; then
        run systemctl start pollex.service
    else
        say "running, nothing changed"
    fi
    [[ $DRY_RUN == 1 ]] && return 0
    local i health
    for ((i = 0; i < HEALTH_WAIT_S; i++)); do
        if health=$(curl -fsS --max-time 2 "$HEALTH_URL"); then
            say "health: $health"
            return 0
        fi
        sleep 1
    done
    warn "no healthy answer from $HEALTH_URL after ${HEALTH_WAIT_S}s: journalctl -u pollex -n 50"
}

main() {
    parse_args "$@"
    preflight
    install_uv
    install_python
    create_venv
    install_package
    ensure_user
    install_config
    install_monitoring
    install_units
    start_pollex
    step "done"
}

main "$@"
