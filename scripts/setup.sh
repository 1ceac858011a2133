#!/usr/bin/env bash
# Installs the system packages the test suite needs, if they are missing:
#   promtool  (Debian package `prometheus`), used by tests/cluster.rs to lint the /metrics exposition.
# Idempotent: does nothing (not even `apt-get update`) when everything is already there.
# Runs as root, non-interactively (CI, a fresh Debian machine); uses sudo if not root and sudo exists.
# While installing, /usr/sbin/policy-rc.d answers 101 so the package does not start a Prometheus
# server; whatever policy-rc.d was there before is put back afterwards, even on failure.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: promtool already installed ($(command -v promtool))"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi

policy=/usr/sbin/policy-rc.d
backup=""
restore_policy() {
    if [ -n "$backup" ]; then
        "${SUDO[@]}" mv -f "$backup" "$policy"
    else
        "${SUDO[@]}" rm -f "$policy"
    fi
}

if [ -e "$policy" ]; then
    backup="$("${SUDO[@]}" mktemp "${policy}.setup-backup.XXXXXX")"
    "${SUDO[@]}" cp -p "$policy" "$backup"
fi
trap restore_policy EXIT
printf '#!/bin/sh\n# Written by scripts/setup.sh while installing: start no services.\nexit 101\n' \
    | "${SUDO[@]}" tee "$policy" >/dev/null
"${SUDO[@]}" chmod 755 "$policy"

echo "setup: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

command -v promtool >/dev/null 2>&1 || { echo "setup: promtool still not on PATH" >&2; exit 1; }
echo "setup: promtool installed ($(command -v promtool))"
