#!/usr/bin/env bash
# Set up Suanli from nothing on a Debian/Ubuntu machine: system packages, a virtualenv in .venv, the
# project and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "setup: Python >= 3.11 is required (none found on PATH)" >&2
    exit 2
}

# System packages:
# - libgmp-dev and a C compiler: fastecdsa (a py-libp2p dependency) builds from source against GMP;
# - busybox-static: the static busybox that the local demo/test image is built from (no registry needed).
missing=()
[ -e /usr/include/gmp.h ] || [ -e "/usr/include/$(uname -m)-linux-gnu/gmp.h" ] || missing+=(libgmp-dev)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
# - e2fsprogs and mount: every job's /io is an ext4 file of the agreed size on a loop device (docs/SANDBOX.md, Disk).
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || [ -x /usr/sbin/losetup ] || [ -x /sbin/losetup ] || missing+=(mount)
if command -v dpkg >/dev/null 2>&1; then
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
fi
# - mmdebstrap: builds the Python workload image (sandbox.pyimage) offline from Debian's packages;
# - docker-registry: a real registry (the CNCF distribution server) that the tests run on 127.0.0.1.
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=$(pick_python)
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready ($(.venv/bin/python --version); suanli at .venv/bin/suanli)"
