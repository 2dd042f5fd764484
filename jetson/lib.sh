# shellcheck shell=bash
# Helpers shared by build-llamacpp.sh, install-pollex.sh and deploy.sh, which source it
# from beside themselves: copy it to the Nano with them. Not run on its own.
# The sourcing script sets DRY_RUN (1: print the commands that would change the system).

step() { printf '==> %s\n' "$*"; }
say()  { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

quote() { local out; printf -v out '%q ' "$@"; printf '%s' "${out% }"; }

run() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '[dry-run] %s\n' "$(quote "$@")"
        return 0
    fi
    "$@"
}

# write_file DEST MODE < content: atomic replace (rename), so an interrupt never leaves half a file.
write_file() {
    local dest=$1 mode=$2 tmp
    if [[ $DRY_RUN == 1 ]]; then
        cat >/dev/null
        printf '[dry-run] write %s (mode %s)\n' "$dest" "$mode"
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
}

file_sha256() { sha256sum "$1" | cut -d' ' -f1; }
