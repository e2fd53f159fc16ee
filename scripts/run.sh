#!/usr/bin/env bash
# The main job (placeholder until the pipelines land).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --workspace
echo "copier-lora workspace built"
