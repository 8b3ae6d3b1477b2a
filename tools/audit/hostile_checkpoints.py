"""Hostile checkpoints (issue 13 audit, rerun by hand): variants of the tiny fixtures with one value
made hostile, each loaded by `gptoss run`. Every run must end in a clear error (exit 1) or a result,
never a signal, and never use over 2 GiB. Usage: python3 tools/audit/hostile_checkpoints.py GPTOSS_BIN
Prints one line per case: name, exit status, peak RSS, first line of the error."""

import json, os, resource, shutil, struct, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests/fixtures/tiny")
GGUF = os.path.join(TINY, "gguf/tiny-llamacpp-q8_0.gguf")


def hf_copy(work, name, src="hf-mxfp4"):
    d = os.path.join(work, name)
    os.makedirs(d)
    for f in os.listdir(os.path.join(TINY, src)):
        s = os.path.join(TINY, src, f)
        if f.endswith(".safetensors"):
            os.symlink(s, os.path.join(d, f))
        else:
            shutil.copy(s, os.path.join(d, f))
    return d


def edit_json(path, fn):
    v = json.load(open(path))
    fn(v)
    json.dump(v, open(path, "w"))


# --- a minimal GGUF rewriter: parse every KV generically, edit, re-emit; tensor infos and data kept.
SIZES = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_value(b, p, t):
    if t in SIZES:
        n = struct.calcsize(SIZES[t])
        return b[p:p + n], p + n
    if t == 8:
        (n,) = struct.unpack_from("<Q", b, p)
        return b[p:p + 8 + n], p + 8 + n
    if t == 9:
        et, cnt = struct.unpack_from("<IQ", b, p)
        q = p + 12
        for _ in range(cnt):
            _, q = read_value(b, q, et)
        return b[p:q], q
    raise ValueError(t)


def gguf_rewrite(src, dst, edit):
    b = open(src, "rb").read()
    version, n_t, n_kv = struct.unpack_from("<IQQ", b, 4)
    p, kvs = 24, []
    for _ in range(n_kv):
        (kl,) = struct.unpack_from("<Q", b, p)
        key = b[p + 8:p + 8 + kl].decode()
        (t,) = struct.unpack_from("<I", b, p + 8 + kl)
        raw, q = read_value(b, p + 12 + kl, t)
        kvs.append((key, t, raw))
        p = q
    infos_start = p
    for _ in range(n_t):
        (nl,) = struct.unpack_from("<Q", b, p)
        (nd,) = struct.unpack_from("<I", b, p + 8 + nl)
        p += 8 + nl + 4 + 8 * nd + 4 + 8
    infos = b[infos_start:p]
    align = 32
    for k, t, raw in kvs:
        if k == "general.alignment":
            (align,) = struct.unpack("<I", raw)
    data = b[(p + align - 1) // align * align:]
    kvs = edit(kvs)
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, n_t, len(kvs)))
    for k, t, raw in kvs:
        out += struct.pack("<Q", len(k)) + k.encode() + struct.pack("<I", t) + raw
    out += infos
    out += b"\0" * ((-len(out)) % align)
    open(dst, "wb").write(bytes(out) + data)


def set_kv(key, t, raw):
    def edit(kvs):
        kvs = [kv for kv in kvs if kv[0] != key]
        return kvs + [(key, t, raw)]
    return edit


def cases(work):
    out = []
    for field, value in [("num_local_experts", 10**9), ("num_hidden_layers", 2 * 10**9),
                         ("vocab_size", 2**40), ("hidden_size", 10**9), ("rope_theta", 0),
                         ("rope_theta", -150000.0), ("rms_norm_eps", -1e-5), ("eos_token_id", 2**32),
                         ("max_position_embeddings", 10**15), ("sliding_window", 10**12),
                         ("num_key_value_heads", 0), ("head_dim", 10**6)]:
        d = hf_copy(work, f"hf-{field}-{value}")
        edit_json(os.path.join(d, "config.json"), lambda v: v.__setitem__(field, value))
        out.append((f"config.json {field}={value}", d))
    d = hf_copy(work, "hf-yarn0")
    edit_json(os.path.join(d, "config.json"), lambda v: v["rope_scaling"].__setitem__("factor", 0))
    out.append(("config.json rope_scaling.factor=0", d))
    d = hf_copy(work, "original-layers", "original")
    edit_json(os.path.join(d, "config.json"), lambda v: v.__setitem__("num_hidden_layers", 2 * 10**9))
    out.append(("original/config.json num_hidden_layers=2e9", d))
    for shard in ["../../../etc/passwd", "/etc/passwd"]:
        d = hf_copy(work, f"index-{len(out)}")
        edit_json(os.path.join(d, "model.safetensors.index.json"),
                  lambda v: v["weight_map"].__setitem__(next(iter(v["weight_map"])), shard))
        out.append((f"index.json shard {shard}", d))
    d = hf_copy(work, "tok-merges")
    edit_json(os.path.join(d, "tokenizer.json"), lambda v: v["model"].__setitem__("merges", {"a": "b"}))
    out.append(("tokenizer.json merges={}", d))
    d = hf_copy(work, "tok-id")
    edit_json(os.path.join(d, "tokenizer.json"), lambda v: v["model"]["vocab"].__setitem__("zz", 4 * 10**9))
    out.append(("tokenizer.json id=4e9", d))
    # safetensors headers
    for name, header in [("header_len=2^63", None), ("9 dims", {"x": {"dtype": "U8", "shape": [1] * 9, "data_offsets": [0, 1]}}),
                         ("shape product overflow", {"x": {"dtype": "Q9", "shape": [2**32, 2**32, 2**32], "data_offsets": [0, 0]}})]:
        d = os.path.join(work, f"st-{len(out)}")
        os.makedirs(d)
        shutil.copy(os.path.join(TINY, "hf-mxfp4/config.json"), d)
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            if header is None:
                f.write(struct.pack("<Q", 2**63) + b"{}")
            else:
                h = json.dumps(header).encode()
                f.write(struct.pack("<Q", len(h)) + h + b"\0")
        out.append((f"safetensors {name}", d))
    if GGUF:
        u32 = lambda n: struct.pack("<I", n)
        u64 = lambda n: struct.pack("<Q", n)
        for name, edit in [("block_count=1e9", set_kv("gpt-oss.block_count", 4, u32(10**9))),
                           ("expert_count=1e9", set_kv("gpt-oss.expert_count", 4, u32(10**9))),
                           ("split.count=1e10", set_kv("split.count", 10, u64(10**10))),
                           ("64 Mi-element u8 array", set_kv("x.big", 9, struct.pack("<IQ", 0, 64 << 20) + b"\x07" * (64 << 20))),
                           ("rope.freq_base=0", set_kv("gpt-oss.rope.freq_base", 6, struct.pack("<f", 0.0)))]:
            dst = os.path.join(work, f"g{len(out)}.gguf")
            gguf_rewrite(GGUF, dst, edit)
            out.append((f"GGUF {name}", dst))
        dst = os.path.join(work, "badmagic.gguf")
        b = bytearray(open(GGUF, "rb").read())
        b[:4] = b"GGML"
        open(dst, "wb").write(b)
        out.append(("GGUF bad magic", dst))
    return out


def main():
    exe = sys.argv[1]
    work = tempfile.mkdtemp(prefix="gptoss-audit-")
    worst = 0
    bad = 0
    for name, path in cases(work):
        proc = subprocess.Popen([exe, "run", "--model", path, "--tokens", "1,2,3", "-n", "2", "--device", "cpu"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=300)
        # The largest peak RSS of any run so far (KiB): below 2 GiB at the end means every run was.
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        worst = max(worst, rss)
        line = (err.strip().splitlines() or [out.strip()[:80]])[0][:150]
        signal = proc.returncode < 0
        bad += signal or rss > 2 * 1024 * 1024
        print(f"{name:45s} exit {proc.returncode:3d}  max-peak {rss / 1024:7.1f} MiB  {line}")
    print(f"{bad} runs ended by a signal or over 2 GiB; peak RSS of any run {worst / 1024:.1f} MiB")
    shutil.rmtree(work)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
