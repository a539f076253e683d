#!/usr/bin/env bash
# Runs every test: unit tests, and the end-to-end tests (.slt files, the
# randomized oracle, kill -9 restart, Kafka sources and sinks against
# librdkafka's mock broker, psql, extended protocol) against a real eddy
# process.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --workspace --bins --tests
cargo test --workspace
