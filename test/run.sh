#!/usr/bin/env bash
# The test command: sets up the machine, builds, runs every test file one at a time (they attach
# real BPF programs and start real servers, so they must not overlap).
set -euo pipefail
cd "$(dirname "$0")/.."
bash test/setup.sh
mkdir -p test-artifacts
exec node --test --test-concurrency=1 --test-reporter=spec dist/test/
