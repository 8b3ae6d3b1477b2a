#!/usr/bin/env bash
# Fuzzing the readers of untrusted input: the GGUF container, the safetensors header, the config parsers
# (config.json and GGUF metadata), tokenizer.json and the Harmony parser. Seeds come from the committed
# fixtures (tests/fixtures), written into fuzz/corpus/<target>/ (not committed).
#
#   bash fuzz/run.sh short            # CI: each target ~12 s (about a minute in all), 2 GiB RSS cap
#   bash fuzz/run.sh runs 1000000     # each target for exactly N executions (the 1M-execution check)
#   bash fuzz/run.sh time 3600        # each target for N seconds (the long run)
#
# The toolchain here is stable only: cargo-fuzz needs nightly's -Z flags, which RUSTC_BOOTSTRAP=1 allows
# on a stable compiler (AddressSanitizer's runtime ships with stable's rust-std). A crash leaves its input
# in fuzz/artifacts/<target>/ and fails the run. Execution counts print as "stat::number_of_executed_units".
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
mode="${1:-short}"
arg="${2:-}"
targets=(gguf_container safetensors_header config tokenizer_json harmony_parser)
fixtures=../tests/fixtures

seed() {
    local t="$1"
    mkdir -p "corpus/$t"
    case "$t" in
        gguf_container | config)
            # The heads of the fixture GGUFs: the header, metadata and tensor infos (and truncations).
            for f in "$fixtures"/tiny/gguf/*.gguf; do
                head -c 65536 "$f" > "corpus/$t/$(basename "$f").head"
            done
            if [ "$t" = config ]; then
                for d in "$fixtures"/tiny/*/; do
                    [ -f "$d/config.json" ] && cp "$d/config.json" "corpus/$t/$(basename "$d").config.json"
                done
            fi
            ;;
        safetensors_header)
            for f in $(find "$fixtures" -name '*.safetensors'); do
                head -c 65536 "$f" > "corpus/$t/$(basename "$(dirname "$f")")-$(basename "$f").head"
            done
            ;;
        tokenizer_json)
            cp "$fixtures"/harmony/tokenizer.json "corpus/$t/harmony.json"
            cp "$fixtures"/harmony/tokenizer-permuted.json "corpus/$t/permuted.json"
            cp "$fixtures"/tiny/hf-mxfp4/tokenizer.json "corpus/$t/tiny.json"
            ;;
        harmony_parser)
            # The golden completions of parse.json as 3-byte little-endian token ids.
            python3 - "$fixtures/harmony/parse.json" "corpus/$t" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
for i, c in enumerate(cases):
    with open(f"{sys.argv[2]}/case{i}.bin", "wb") as f:
        for t in c["ids"]:
            f.write(t.to_bytes(3, "little"))
PY
            ;;
    esac
}

cargo fuzz build --release 2>&1 | tail -3
status=0
for t in "${targets[@]}"; do
    seed "$t"
    case "$mode" in
        short) limit=(-max_total_time=12) ;;
        runs) limit=(-runs="${arg:?runs N}") ;;
        time) limit=(-max_total_time="${arg:?time SECONDS}") ;;
        *) echo "unknown mode $mode (short, runs N, time SECONDS)" >&2; exit 2 ;;
    esac
    echo "== fuzz $t (${limit[*]})"
    log="$(mktemp)"
    if cargo fuzz run --release "$t" "corpus/$t" -- "${limit[@]}" -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 > "$log" 2>&1; then
        grep -E "stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs" "$log" || tail -3 "$log"
    else
        tail -40 "$log"
        echo "fuzz target $t FAILED (input saved under fuzz/artifacts/$t/)"
        status=1
    fi
    rm -f "$log"
done
exit $status
