#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --workspace --all-features "$@"
