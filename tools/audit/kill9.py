"""kill -9 of `batch` and `convert` (issue 13 audit, rerun by hand). batch: a 300-line job killed at
random moments and rerun until done must end with exactly one valid result line per custom_id.
convert: killed at 40 moments 2 ms apart, the output folder must hold nothing or the whole GGUF (the
same bytes every time) and never a temporary file. Usage: python3 tools/audit/kill9.py GPTOSS_BIN"""

import json, os, random, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests/fixtures/tiny")


def batch(exe, work):
    inp, out = os.path.join(work, "in.jsonl"), os.path.join(work, "out.jsonl")
    with open(inp, "w") as f:
        for i in range(300):
            body = {"messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 4, "temperature": 0}
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
    rng, kills, runs = random.Random(13), 0, 0
    while True:
        runs += 1
        p = subprocess.Popen([exe, "batch", inp, "-o", out, "--model", os.path.join(TINY, "hf-mxfp4"), "--device", "cpu"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=rng.uniform(0.05, 0.8))
            break
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            kills += 1
        if runs > 200:
            raise SystemExit("batch never finished")
    ids = [json.loads(l)["custom_id"] for l in open(out)]
    ok = sorted(ids) == sorted(f"r{i}" for i in range(300))
    print(f"batch: {kills} kill -9, {runs} runs; {len(ids)} lines, one per custom_id: {ok}")
    return ok


def convert(exe, work):
    d = os.path.join(work, "conv")
    os.makedirs(d)
    out = os.path.join(d, "m.gguf")
    whole, states = None, {"absent": 0, "whole": 0}
    bad = 0
    for i in range(40):
        if os.path.exists(out):
            os.remove(out)
        p = subprocess.Popen([exe, "convert", os.path.join(TINY, "hf-bf16"), out, "--type", "f32"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(i * 0.002)
        p.kill()
        p.wait()
        names = os.listdir(d)
        if any(n != "m.gguf" for n in names):
            bad += 1
            print("left behind:", names)
        if os.path.exists(out):
            data = open(out, "rb").read()
            whole = whole or data
            bad += data != whole
            states["whole"] += 1
        else:
            states["absent"] += 1
    print(f"convert: 40 kill -9 at 0..78 ms: {states}; problems {bad}")
    return bad == 0


def main():
    exe = sys.argv[1]
    work = tempfile.mkdtemp(prefix="gptoss-kill9-")
    ok = batch(exe, work) & convert(exe, work)
    shutil.rmtree(work)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
