#!/usr/bin/env python3
"""Quick check and rough figures for the peer runtimes (not the benchmark).

For each peer: start it N times as a fresh process and time spawn -> first
successful `GET /?name=bench` (polling connect every 0.5 ms), checking the
body is exactly "Hello, bench"; then, optionally, warm requests/s with
`wrk -t1 -c32 -d5s` against one instance.

  PEERS_DIR=... python3 benches/peers/measure.py [--samples 5] [--wrk] [peer ...]

Peers: workerd deno node-vm node-process. Exit status 1 if any check failed.
Traffic goes to 127.0.0.1 only; every loop is bounded.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXPECTED = b'"Hello, bench"'


def commands(peers_dir):
    """argv + extra env per peer; $PORT is filled in at start (the same
    templates as README.md)."""
    return {
        "workerd": (
            [f"{peers_dir}/bin/workerd", "serve", f"{HERE}/workerd/config.capnp",
             "--socket-addr", "http=127.0.0.1:$PORT"],
            {},
        ),
        "deno": (
            [f"{peers_dir}/bin/deno", "run", "--no-config", "--no-lock", "--no-npm",
             "--cached-only", "--no-prompt", "--allow-net=127.0.0.1", "--allow-env=PORT",
             f"{HERE}/deno/hello.ts"],
            {"DENO_DIR": f"{peers_dir}/deno-dir", "DENO_NO_UPDATE_CHECK": "1"},
        ),
        "node-vm": (["node", f"{HERE}/node/vm.js"], {}),
        "node-process": (["node", f"{HERE}/node/process.js"], {}),
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def try_get(port):
    """One GET on a new connection; (status, body) or None when not listening yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /?name=bench HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d+)", head)
    if not m:
        return None
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return int(m.group(1)), head, body


def dechunk(body):
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


def start(argv, env_extra, port):
    """Spawn a peer; its stderr is kept in proc.stderr_file."""
    argv = [a.replace("$PORT", str(port)) for a in argv]
    # A clean environment, as the harness should use: e.g. NODE_EXTRA_CA_CERTS
    # (set on this machine) alone adds ~60 ms to every node start.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": str(port), **env_extra}
    # stderr to a file, not a pipe nobody drains during wrk
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=err)
    proc.stderr_file = err
    return proc


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stderr_file.close()


def cold_start(argv, env_extra, deadline_s=20.0):
    port = free_port()
    t0 = time.perf_counter()
    proc = start(argv, env_extra, port)
    try:
        while time.perf_counter() - t0 < deadline_s:
            r = try_get(port)
            if r is not None:
                ms = (time.perf_counter() - t0) * 1000
                status, head, body = r
                ok = status == 200 and body == EXPECTED and b"application/json" in head.lower()
                return ms, ok, (status, body)
            if proc.poll() is not None:
                proc.stderr_file.seek(0)
                return None, False, proc.stderr_file.read().decode(errors="replace")
            time.sleep(0.0005)
        return None, False, "timeout"
    finally:
        stop(proc)


def warm(argv, env_extra, seconds=5, connections=32):
    port = free_port()
    proc = start(argv, env_extra, port)
    try:
        t0 = time.perf_counter()
        while try_get(port) is None and time.perf_counter() - t0 < 20:
            time.sleep(0.005)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
             f"http://127.0.0.1:{port}/?name=bench"],
            capture_output=True, text=True, timeout=seconds + 30).stdout
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
        return (float(rps.group(1)) if rps else None), (errors.group(0) if errors else ""), out
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peers", nargs="*")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--wrk", action="store_true")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    peers_dir = os.environ.get("PEERS_DIR", os.path.join(REPO, "target", "peers"))
    cmds = commands(peers_dir)
    names = args.peers or list(cmds)
    failed = False
    report = {}
    for name in names:
        argv, env_extra = cmds[name]
        samples = []
        for _ in range(args.samples):
            ms, ok, info = cold_start(argv, env_extra)
            if not ok:
                print(f"{name}: FAILED {info}", file=sys.stderr)
                failed = True
                break
            samples.append(ms)
        row = {"cold_start_ms": [round(s, 1) for s in samples]}
        if samples:
            row["cold_start_ms_p50"] = round(statistics.median(samples), 1)
        if args.wrk and shutil.which("wrk") and not failed:
            rps, errors, _ = warm(argv, env_extra, args.wrk_seconds, args.connections)
            row["warm_requests_per_s"] = rps
            if errors:
                row["wrk_errors"] = errors
        report[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    print(json.dumps(report))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
