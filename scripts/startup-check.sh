#!/usr/bin/env bash
# Start-up time and host memory of `gptoss run --device cuda` on a random 20b (issue 10, item 3): process start to
# 16 generated tokens, peak RSS, and the host memory left once the weights are on the GPU (the
# "[weights on the GPU in ...; host memory after upload ...]" line of `run`), for the 20b GGUF (MXFP4 experts,
# Q8_0 dense) and the HF MXFP4 checkpoint it is converted from, each with the file evicted from the page cache
# (cold) and then again (warm). The first run uses an empty cubin cache, so it also shows the one-time NVRTC
# compile ("compiling CUDA kernels for sm_XX (once; cached in DIR)"); the others use the warm cache. The GGUF's
# block formats are repacked on the GPU; one more warm GGUF run repacks them on the host (GPTOSS_REPACK=host), the
# way before, for comparison.
# Run from the repo root on the GPU machine; needs ~25 GB of disk in WORKDIR and python3.
#
#   scripts/startup-check.sh [GPTOSS_BINARY] [WORKDIR]     (defaults: .carry/gptoss-cuda/gptoss, /tmp/gptoss-startup)
set -uo pipefail
bin="${1:-.carry/gptoss-cuda/gptoss}"
work="${2:-/tmp/gptoss-startup}"
logs="${OUT:-startup-logs}"
mkdir -p "$work" "$logs"
[ -x "$bin" ] || { echo "no gptoss binary at $bin (scripts/gpu-check.sh --stage DIR builds one)" >&2; exit 2; }

if [ ! -f "$work/hf20b/config.json" ]; then
    "$bin" synth --dummy gpt-oss-20b "$work/hf20b" --force || exit 2
fi
if [ ! -f "$work/20b.gguf" ]; then
    "$bin" convert "$work/hf20b" "$work/20b.gguf" --type mxfp4 || exit 2
fi

# Drops a file's (or a directory's files') pages from the page cache: no root needed for clean pages.
evict() {
    python3 - "$1" <<'EOF'
import os, sys
p = sys.argv[1]
files = [p] if os.path.isfile(p) else [os.path.join(p, f) for f in os.listdir(p)]
for f in files:
    fd = os.open(f, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
EOF
}

# Runs one `gptoss run` (with the environment settings given) under python's clock and rusage: prints wall
# seconds, the peak RSS in GiB and the exit status.
measure() {
    local name="$1" model="$2"
    shift 2
    python3 - "$logs/$name" env "$@" "$bin" run --model "$model" --device cuda --prompt "Hello" -n 16 --ctx 4096 <<'EOF'
import resource, subprocess, sys, time
log, cmd = sys.argv[1], sys.argv[2:]
start = time.monotonic()
with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
    rc = subprocess.run(cmd, stdout=out, stderr=err).returncode
wall = time.monotonic() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 / 1024
print(f"{wall:.2f} {peak:.2f} {rc}")
EOF
}

rows=()
run_case() {
    local name="$1" model="$2" cache="$3"
    shift 3
    [ "$cache" = cold ] && evict "$model"
    read -r wall peak rc < <(measure "$name" "$model" "$@")
    local upload compile
    upload="$(grep -h '^\[weights on the GPU' "$logs/$name.err" | tail -n 1)"
    compile="$(grep -h '^compiling CUDA kernels' "$logs/$name.err" | tail -n 1)"
    rows+=("$(printf '%-22s | %6ss | %6s GiB | rc %s | %s %s' "$name" "$wall" "$peak" "$rc" "$upload" "${compile:+($compile)}")")
}

fresh="$work/cubin-fresh"
rm -rf "$fresh"
run_case gguf-first-nvrtc "$work/20b.gguf" warm "GPTOSS_CACHE_DIR=$fresh"
run_case gguf-cold "$work/20b.gguf" cold "GPTOSS_CACHE_DIR=$fresh"
run_case gguf-warm "$work/20b.gguf" warm "GPTOSS_CACHE_DIR=$fresh"
run_case gguf-warm-2 "$work/20b.gguf" warm "GPTOSS_CACHE_DIR=$fresh"
run_case gguf-warm-host-repack "$work/20b.gguf" warm "GPTOSS_CACHE_DIR=$fresh" GPTOSS_REPACK=host
run_case hf-mxfp4-cold "$work/hf20b" cold "GPTOSS_CACHE_DIR=$fresh"
run_case hf-mxfp4-warm "$work/hf20b" warm "GPTOSS_CACHE_DIR=$fresh"
run_case hf-mxfp4-warm-2 "$work/hf20b" warm "GPTOSS_CACHE_DIR=$fresh"

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
echo "host: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
printf '%-22s | %7s | %10s | %4s | %s\n' run wall 'peak RSS' rc 'upload line of run (and the compile notice)'
printf '%s\n' "${rows[@]}"
echo "logs: $logs"
