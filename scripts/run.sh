#!/usr/bin/env bash
# Starts eddy with embedded defaults: 127.0.0.1:4466, data in ./eddy-data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --release --bin eddy -- "$@"
