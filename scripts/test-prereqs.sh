#!/usr/bin/env bash
# scripts/test-prereqs.sh — installs, with apt-get, what scripts/dev-up and the tests need and the
# machine lacks:
#   mariadb  Debian's MariaDB server and client (mariadbd, mariadb-install-db, mariadb,
#            mariadb-admin, the ed25519 auth plugin);
#   python   python3 with a working `python3 -m venv` (python3-venv: Debian keeps ensurepip
#            there), for the tests that drive real Python clients;
#   sysbench sysbench (its oltp_* workloads through libmariadb), for tests/pooled_clients.rs;
#   build    make and gcc, which the build needs (the mlua crate builds LuaJIT from source with
#            LuaJIT's Makefile); scripts/dev-up runs this part before it builds.
# With no argument, all four. Idempotent and non-interactive: it installs nothing when all is
# there, runs apt-get as root or through `sudo -n` (never asks for a password), and otherwise
# fails with the exact command to run. The test harness (tests/common/mariadb.rs; for sysbench,
# tests/pooled_clients.rs) runs it by itself when a binary is missing, serialised by a lock on
# target/.prereqs.lock.
set -euo pipefail

say() { printf 'test-prereqs: %s\n' "$*" >&2; }

have() {
    command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]] || [[ -x /usr/bin/$1 ]]
}

mariadb_ok() {
    local bin
    for bin in mariadbd mariadb-install-db mariadb mariadb-admin; do
        have "$bin" || return 1
    done
}

python_ok() {
    have python3 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1
}

sysbench_ok() {
    have sysbench
}

build_ok() {
    have make && have gcc
}

want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(mariadb python sysbench build)
packages=()
for w in "${want[@]}"; do
    case $w in
        mariadb) mariadb_ok || packages+=(mariadb-server mariadb-client) ;;
        python) python_ok || packages+=(python3 python3-venv) ;;
        sysbench) sysbench_ok || packages+=(sysbench) ;;
        build) build_ok || packages+=(make gcc libc6-dev) ;;
        *) say "unknown part $w (mariadb, python, sysbench, build)"; exit 2 ;;
    esac
done

if [[ ${#packages[@]} -eq 0 ]]; then
    say "present: ${want[*]}"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    say "missing packages: ${packages[*]}, and no root or password-less sudo to install them."
    say "Run this once, then try again:"
    say "  sudo apt-get update && sudo apt-get install -y ${packages[*]}"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
say "installing ${packages[*]} with ${sudo[*]:+${sudo[*]} }apt-get"
"${sudo[@]}" apt-get update -q >&2
"${sudo[@]}" apt-get install -y -q "${packages[@]}" >&2

failed=0
for w in "${want[@]}"; do
    case $w in
        mariadb) mariadb_ok || { say "MariaDB binaries still missing after apt-get"; failed=1; } ;;
        python) python_ok || { say "python3 -m venv still unusable after apt-get"; failed=1; } ;;
        sysbench) sysbench_ok || { say "sysbench still missing after apt-get"; failed=1; } ;;
        build) build_ok || { say "make or gcc still missing after apt-get"; failed=1; } ;;
    esac
done
[[ $failed -eq 0 ]] || exit 1
say "done"
