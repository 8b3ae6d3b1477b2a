"""Slow and oversized clients (issue 13 audit, rerun by hand) against `gptoss serve` on the tiny model:
bodies one byte short of 4 MiB, 1,000 idle connections, 16 concurrent 4 MB bodies, 4 MB tool schemas,
and SIGINT with connections open; the server's RSS (VmRSS / VmHWM) and `/health` latency meanwhile.
Usage: python3 tools/audit/clients.py GPTOSS_BIN. Loopback only; every loop is bounded."""

import json, os, re, resource, signal, socket, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests/fixtures/tiny/hf-mxfp4")


def rss(pid):
    s = open(f"/proc/{pid}/status").read()
    get = lambda k: int(re.search(rf"{k}:\s+(\d+)", s).group(1)) / 1024
    return get("VmRSS"), get("VmHWM")


def health_ms(port, want=b"HTTP/1.1 200"):
    t = time.time()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = s.recv(4096)
    s.close()
    assert data.startswith(want), data[:60]
    return (time.time() - t) * 1000


def closed_within(socks, seconds):
    """How many of `socks` the server closed (EOF or reset) within `seconds`."""
    deadline = time.time() + seconds
    closed = set()
    while time.time() < deadline and len(closed) < len(socks):
        for i, s in enumerate(socks):
            if i in closed:
                continue
            s.setblocking(False)
            try:
                if s.recv(65536) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(0.2)
    return len(closed)


def post(port, body, out, i):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out[i] = data.split(b"\r\n", 1)[0].decode()
    except OSError as e:
        out[i] = f"error {e}"


def watch(pid, port, stop, samples):
    while not stop.is_set():
        samples.append((health_ms(port), rss(pid)[0]))
        time.sleep(0.2)


def main():
    exe = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    server = subprocess.Popen([exe, "serve", "--model", MODEL, "--port", "0", "--device", "cpu", "--ctx", "4096"],
                              stderr=subprocess.PIPE, text=True)
    line = server.stderr.readline()
    port = int(re.search(r":(\d+)/v1", line).group(1))
    pid = server.pid
    print(f"server pid {pid} port {port}; RSS at start {rss(pid)[0]:.0f} MiB")

    # A. 100 bodies one byte short of 4 MiB.
    socks = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  + f"content-length: {4 << 20}\r\n\r\n".encode() + b" " * ((4 << 20) - 1))
        socks.append(s)
    time.sleep(1)
    print(f"A. 100 bodies 1 byte short of 4 MiB: RSS {rss(pid)[0]:.0f} MiB, /health {health_ms(port):.1f} ms")
    n = closed_within(socks, 45)
    print(f"   closed by the server within 45 s (body timeout 30 s): {n}/100; RSS after {rss(pid)[0]:.0f} MiB")
    for s in socks:
        s.close()

    # B. 1,000 idle connections.
    socks, refused = [], 0
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    time.sleep(1)
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(64).startswith(b"HTTP/1.1 503"):
                refused += 1
        except (BlockingIOError, OSError):
            pass
    print(f"B. 1000 idle connections: {refused} answered 503 at once (cap 512); "
          f"/health meanwhile 503 in {health_ms(port, b'HTTP/1.1 503'):.1f} ms")
    t0 = time.time()
    n = closed_within(socks, 20)
    print(f"   closed within 20 s (keep-alive 5 s, header 10 s): {n}/1000 after {time.time() - t0:.1f} s; "
          f"/health then {health_ms(port):.1f} ms")
    for s in socks:
        s.close()

    # C. 16 concurrent 4 MB bodies, then 4 MB tool schemas, with /health sampled meanwhile.
    big = json.dumps({"model": "hf-mxfp4", "messages": [{"role": "user", "content": "word " * 800_000}]}).encode()
    schema = {"type": "string"}
    for i in range(55):
        schema = {"type": "object", "properties": {f"p{i}": schema, "x": {"type": "number"}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    tools = [tool] * max(1, (4 << 20) // len(json.dumps(tool)) - 1)  # just under --max-body-bytes
    schema_body = json.dumps({"model": "hf-mxfp4", "messages": [{"role": "user", "content": "hi"}], "tools": tools}).encode()
    for name, body in [("16 x 4 MB message bodies", big), ("16 x 4 MB tool-schema bodies", schema_body)]:
        stop, samples, out = threading.Event(), [], [None] * 16
        w = threading.Thread(target=watch, args=(pid, port, stop, samples))
        w.start()
        ts = [threading.Thread(target=post, args=(port, body, out, i)) for i in range(16)]
        t0 = time.time()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stop.set()
        w.join()
        statuses = sorted(set(out))
        worst = max(h for h, _ in samples)
        peak = max(r for _, r in samples)
        print(f"C. {name} ({len(body) / 1e6:.1f} MB each): answered in {time.time() - t0:.1f} s with {statuses}; "
              f"/health max {worst:.0f} ms over {len(samples)} samples; RSS peak sampled {peak:.0f} MiB, VmHWM {rss(pid)[1]:.0f} MiB")

    # D. SIGINT with 200 idle connections open.
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    t0 = time.time()
    server.send_signal(signal.SIGINT)
    server.wait(timeout=60)
    print(f"D. SIGINT with 200 idle connections: exited {server.returncode} after {time.time() - t0:.2f} s "
          f"(shutdown deadline 10 s); VmHWM over the whole run shown above")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
