#!/usr/bin/env bash
# The test command of the README: every unit and integration test of the workspace (GPU tests are
# #[ignore]d here and run by scripts/gpu-check.sh on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace "$@"
