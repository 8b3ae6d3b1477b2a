#!/usr/bin/env bash
# The test command of the README: every unit and integration test of the workspace (GPU tests are
# #[ignore]d here and run by scripts/gpu-check.sh on a GPU machine). A test whose peer is missing (the
# Python packages of tools/test-requirements.txt, NVRTC) does not pass silently: it is listed as SKIPPED
# after cargo's summary. GPTOSS_REQUIRE_PEERS=1 (set by .ci/run) turns such a skip into a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
skips="$(mktemp)"
trap 'rm -f "$skips"' EXIT
export GPTOSS_SKIP_LOG="$skips"
cargo test --workspace "$@"
status=$?
if [ -s "$skips" ]; then
    echo "== $(wc -l < "$skips") test(s) SKIPPED: a peer they compare against is missing (they checked nothing)"
    sed 's/^/SKIPPED /' "$skips"
    echo "== install them with: python3 -m pip install -r tools/test-requirements.txt (or set GPTOSS_PYTHON)"
fi
exit $status
