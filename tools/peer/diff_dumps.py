"""Diffs two `gptoss logits --dump-layers` dumps (e.g. CPU and CUDA) node by node: for each traced position,
the relative error of every layer's nodes, the first node that departs, and at every layer the router's
top-k boundary (the gap between the k-th and (k+1)-th logit of the reference) against the difference of
those logits between the two dumps, with the experts each side chose.

Usage: python3 diff_dumps.py REFERENCE.json OTHER.json [--threshold 1e-4] [--all]
"""
import json
import sys


def rel_err(a, b):
    scale = max(max(abs(x) for x in a), 1e-30)
    return max(abs(x - y) for x, y in zip(a, b)) / scale


def router_margin(ref_logits, other_logits, k):
    """(gap between the k-th and (k+1)-th reference logit, largest |difference| of those two logits)."""
    order = sorted(range(len(ref_logits)), key=lambda e: (-ref_logits[e], e))
    kth, nxt = order[k - 1], order[k]
    gap = ref_logits[kth] - ref_logits[nxt]
    delta = max(abs(ref_logits[e] - other_logits[e]) for e in (kth, nxt))
    return gap, delta, sorted(order[:k])


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    threshold = 1e-4
    if "--threshold" in sys.argv:
        threshold = float(sys.argv[sys.argv.index("--threshold") + 1])
        args.remove(sys.argv[sys.argv.index("--threshold") + 1])
    show_all = "--all" in sys.argv
    ref, other = (json.load(open(p)) for p in args[:2])
    assert ref["positions"] == other["positions"], "the dumps trace different positions"
    key = lambda n: (n["layer"], n["node"])
    theirs = {key(n): n for n in other["nodes"]}
    print(f"reference {ref['device']} vs {other['device']}; relative error = max|a-b| / max|a| per node")
    for i, pos in enumerate(ref["positions"]):
        print(f"\n== position {pos}")
        first = None
        layers = {}
        for n in ref["nodes"]:
            o = theirs.get(key(n))
            if o is None:
                continue
            a, b = n["rows"][i], o["rows"][i]
            if n["node"] == "experts":
                same = sorted(a) == sorted(b)
                layers.setdefault(n["layer"], {})["experts"] = (a, b, same)
                if not same and first is None:
                    first = (n["layer"], "experts", f"{a} vs {b}")
                continue
            err = rel_err(a, b)
            layers.setdefault(n["layer"], {})[n["node"]] = err
            if err > threshold and first is None:
                first = (n["layer"], n["node"], f"{err:.2e}")
        for layer, nodes in layers.items():
            errs = {k: v for k, v in nodes.items() if k != "experts"}
            worst = max(errs, key=errs.get) if errs else None
            line = f"  layer {layer}: worst {worst} {errs[worst]:.2e}" if worst else f"  layer {layer}:"
            if "experts" in nodes:
                a, b, same = nodes["experts"]
                rl = next((n["rows"][i] for n in ref["nodes"] if key(n) == (layer, "router_logits")), None)
                ol = theirs.get((layer, "router_logits"))
                if rl is not None and ol is not None:
                    gap, delta, _ = router_margin(rl, ol["rows"][i], len(a))
                    line += f"; router k/k+1 gap {gap:.3e}, |d| {delta:.2e}"
                line += "" if same else f"; EXPERTS DIFFER {[int(x) for x in a]} vs {[int(x) for x in b]}"
            if show_all or (worst and errs[worst] > threshold) or "EXPERTS" in line:
                line += "".join(f"\n      {k} {v:.2e}" for k, v in errs.items()) if show_all else ""
                print(line)
        print(f"  first departure over {threshold:g}: {first}")


if __name__ == "__main__":
    main()
