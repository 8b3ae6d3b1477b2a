#!/usr/bin/env bash
# Alternates several gptoss binaries over the same `gptoss bench` workloads, so that what the machine does
# meanwhile (another process, a slow host of the pool, the clock) hits every binary alike, and prints one
# table: each test's tok/s per binary and round, and their means. The order of the binaries flips every
# round. Used for the A/B measurements in bench/BENCHMARKS.md, on the GPU machine and on the CPU ones.
#
#   scripts/ab.sh [-r ROUNDS] NAME=BINARY... -- 'BENCH ARGS' ['BENCH ARGS'...]
#
# e.g. scripts/ab.sh -r 2 base=.carry/base/gptoss new=.carry/new/gptoss -- \
#          '--dummy gpt-oss-20b --device cuda --tests tg -n 128 -r 1' \
#          '--dummy gpt-oss-20b --device cuda --cpu-moe --expert-cache off --tests tg -n 32 -r 1'
#
# Every run's JSON and stderr go to $OUT (the device tool's output folder) or ./ab-logs; the table is also
# written there as ab.txt. A run that fails is shown as "failed" with its log's name, and the script exits 1.
set -uo pipefail

rounds=1
if [ "${1:-}" = "-r" ]; then
    rounds="${2:?-r needs a count}"
    shift 2
fi
names=()
bins=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case "$1" in
    *=*)
        names+=("${1%%=*}")
        bins+=("${1#*=}")
        ;;
    *)
        echo "ab.sh: expected NAME=BINARY, got '$1'" >&2
        exit 2
        ;;
    esac
    shift
done
if [ "${1:-}" != "--" ] || [ $# -lt 2 ] || [ ${#bins[@]} -eq 0 ]; then
    echo "usage: scripts/ab.sh [-r ROUNDS] NAME=BINARY... -- 'BENCH ARGS'..." >&2
    exit 2
fi
shift
for b in "${bins[@]}"; do
    [ -x "$b" ] || { echo "ab.sh: $b is not an executable" >&2; exit 2; }
done

logs="${OUT:-ab-logs}"
mkdir -p "$logs"
results="$logs/ab-results.tsv"
: >"$results"
status=0
for ((round = 1; round <= rounds; round++)); do
    order=("${!bins[@]}")
    if ((round % 2 == 0)); then
        order=($(printf '%s\n' "${order[@]}" | tac))
    fi
    for ((w = 1; w <= $#; w++)); do
        args="${!w}"
        for i in "${order[@]}"; do
            log="$logs/r$round-w$w-${names[$i]}"
            # shellcheck disable=SC2086 # the workload is a list of arguments
            if "${bins[$i]}" bench $args --json >"$log.json" 2>"$log.err"; then
                python3 - "$log.json" "$round" "w$w" "${names[$i]}" >>"$results" <<'EOF'
import json, sys
path, rnd, work, name = sys.argv[1:]
for row in json.load(open(path)):
    print(f"{work}:{row['test']}\t{name}\t{rnd}\t{row['tokens_per_second']:.2f}")
EOF
            else
                printf 'w%s:failed\t%s\t%s\t%s\n' "$w" "${names[$i]}" "$round" "$log.err" >>"$results"
                status=1
            fi
            echo "round $round workload $w ${names[$i]} done" >&2
        done
    done
done

python3 - "$results" "${names[@]}" <<'EOF' | tee "$logs/ab.txt"
import sys
from collections import defaultdict
path, names = sys.argv[1], sys.argv[2:]
cells = defaultdict(list)
tests = []
for line in open(path):
    test, name, rnd, value = line.rstrip("\n").split("\t")
    if test not in tests:
        tests.append(test)
    cells[(test, name)].append(value)
print("| test | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
for test in tests:
    row = []
    for name in names:
        vals = cells[(test, name)]
        nums = [float(v) for v in vals if v.replace(".", "", 1).isdigit()]
        mean = f" (mean {sum(nums) / len(nums):.2f})" if len(nums) > 1 else ""
        row.append(" / ".join(vals) + mean)
    print(f"| {test} | " + " | ".join(row) + " |")
EOF
exit $status
