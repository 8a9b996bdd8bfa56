#!/usr/bin/env bash
# scripts/test-prereqs.sh — installs what the integration tests need and the machine lacks:
# Debian's MariaDB server and client (mariadbd, mariadb-install-db, mariadb, mariadb-admin,
# and the ed25519 auth plugins). Idempotent; needs root (or sudo) only when it installs.
set -euo pipefail

have() {
    command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]] || [[ -x /usr/bin/$1 ]]
}

missing=0
for bin in mariadbd mariadb-install-db mariadb mariadb-admin; do
    have "$bin" || missing=1
done
if [[ $missing -eq 0 ]]; then
    echo "test-prereqs: MariaDB server and client present ($(/usr/sbin/mariadbd --version 2>/dev/null || mariadbd --version))"
    exit 0
fi

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "test-prereqs: installing mariadb-server and mariadb-client with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q mariadb-server mariadb-client
for bin in mariadbd mariadb-install-db mariadb mariadb-admin; do
    have "$bin" || { echo "test-prereqs: $bin still missing after apt-get install" >&2; exit 1; }
done
echo "test-prereqs: done"
