#!/usr/bin/env bash
# Run the whole test suite: pure cores, real py-libp2p hosts on 127.0.0.1, real SQLite, real Docker.
# Extra arguments go to pytest (for example: scripts/test.sh tests/settlement -x).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
