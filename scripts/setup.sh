#!/usr/bin/env bash
# Installs what the test suite needs, if it is missing:
#   moto's server (PyPI `moto[server]`, pinned), the EC2 API emulator tests/cloud.rs runs on loopback;
#   redis-py  (PyPI `redis`, pinned), the Python client tests/resp.rs drives the RESP gateway with;
#   promtool  (Debian package `prometheus`), used by tests/cluster.rs to lint the /metrics exposition;
#   redis-cli (Debian package `redis-tools`), the command-line client tests/resp.rs drives the gateway with.
# Idempotent: does nothing (not even `apt-get update` or a pip call) when everything is already there.
# Runs as root, non-interactively (CI, a fresh Debian machine); uses sudo if not root and sudo exists.
# While installing, /usr/sbin/policy-rc.d answers 101 so the package does not start a Prometheus
# server; whatever policy-rc.d was there before is put back afterwards, even on failure.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# --- moto (EC2 emulator for tests/cloud.rs) ---
MOTO_VERSION=5.2.1
if python3 -c 'import moto.server' >/dev/null 2>&1; then
    echo "setup: moto server already installed ($(python3 -c 'import moto; print(moto.__version__)'))"
else
    command -v python3 >/dev/null 2>&1 || { echo "setup: python3 is needed for moto's server" >&2; exit 1; }
    echo "setup: installing moto[server]==${MOTO_VERSION}"
    # pip may be missing (a bare Debian): bring it in with ensurepip, else apt's python3-pip.
    if ! python3 -m pip --version >/dev/null 2>&1; then
        python3 -m ensurepip --upgrade >/dev/null 2>&1 || {
            apt_prefix=()
            [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && apt_prefix=(sudo)
            "${apt_prefix[@]}" apt-get update -q && "${apt_prefix[@]}" apt-get install -y -q --no-install-recommends python3-pip
        }
    fi
    # Debian's system Python refuses global installs (PEP 668) unless told; a pyenv/venv Python does not need it.
    python3 -m pip install -q "moto[server]==${MOTO_VERSION}" \
        || python3 -m pip install -q --break-system-packages "moto[server]==${MOTO_VERSION}"
    python3 -c 'import moto.server' || { echo "setup: moto still not importable" >&2; exit 1; }
    echo "setup: moto[server] ${MOTO_VERSION} installed"
fi

# --- redis-py (tests/resp.rs) ---
REDIS_PY_VERSION=5.2.1
if python3 -c 'import redis' >/dev/null 2>&1; then
    echo "setup: redis-py already installed ($(python3 -c 'import redis; print(redis.__version__)'))"
else
    echo "setup: installing redis==${REDIS_PY_VERSION}"
    python3 -m pip install -q "redis==${REDIS_PY_VERSION}" \
        || python3 -m pip install -q --break-system-packages "redis==${REDIS_PY_VERSION}"
    python3 -c 'import redis' || { echo "setup: redis-py still not importable" >&2; exit 1; }
fi

# --- promtool, redis-cli ---

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: promtool and redis-cli already installed"
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

for tool in promtool redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || { echo "setup: $tool still not on PATH" >&2; exit 1; }
done
echo "setup: installed ${missing[*]}"
