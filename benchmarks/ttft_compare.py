#!/usr/bin/env python3
"""Cold time to first token of a Claude-Code-sized request: kiln serve against llama-server on the
same GGUF file, the same request, 2 threads each, alternated round by round (not part of CI).

    python3 benchmarks/ttft_compare.py [--model FILE] [--rounds 3] [--threads 2]

The request is ../shared/clients/claude-code-first-request.json (Claude Code 2.1.197's first
request) with every "<N chars>" placeholder filled with N characters of English-like words, sent
to POST /v1/messages with max_tokens 1, stream false. Each round changes the first system block
(as Claude Code's billing header does), so neither server can reuse a cached prefix: every
measurement is a cold prefill of the whole prompt. Prints the medians and their ratio.
"""
import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
WORDS = ("the tool file command should when path output user before always read edit directory search "
         "pattern absolute result line return content never instead use string parameter optional default "
         "run test changes repository important example response format task").split()
SYLLABLES = "ka re mo ti lu sa ne vo pi da gu fe zo hi ba ce".split()


def word(rng):
    # Common words, and made-up ones and identifiers as prompts with code and paths have: about
    # 3.7 characters a token on Qwen3's vocabulary, as Claude Code's real prompt.
    r = rng.random()
    if r < 0.55:
        return rng.choice(WORDS)
    if r < 0.8:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
    return rng.choice(["src/", "./", "_", "--", "."]) + "".join(rng.choice(SYLLABLES) for _ in range(2)) + str(rng.randint(0, 99))


def fill(obj, rng):
    if isinstance(obj, dict):
        return {k: fill(v, rng) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fill(v, rng) for v in obj]
    if isinstance(obj, str):
        m = re.fullmatch(r"<(\d+) chars>", obj)
        if m:
            n, s = int(m.group(1)), []
            while sum(len(w) + 1 for w in s) < n:
                s.append(word(rng))
            return " ".join(s)[:n]
    return obj


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port, proc, what, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"ttft_compare: {what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.3)
    sys.exit(f"ttft_compare: {what} did not answer /health in {timeout} s")


def request(port, body):
    data = json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=data,
                                 headers={"content-type": "application/json", "anthropic-version": "2023-06-01",
                                          "x-api-key": "local"})
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    u = out.get("usage", {})
    return time.time() - t0, u.get("input_tokens"), u.get("cache_read_input_tokens")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(SHARED, "models", "qwen3-vocab-tiny.f16.gguf"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    base = json.load(open(os.path.join(SHARED, "clients", "claude-code-first-request.json")))["body"]
    kp, lp = free_port(), free_port()
    kiln = subprocess.Popen([os.path.join(ROOT, "build", "release", "kiln"), "serve", "-m", a.model, "-c", "32768",
                             "-t", str(a.threads), "--port", str(kp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer = subprocess.Popen([os.path.join(SHARED, "peer", "bin", "llama-server"), "-m", a.model, "-c", "32768", "--jinja",
                             "-np", "1", "-t", str(a.threads), "--port", str(lp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(kp, kiln, "kiln serve")
        wait_up(lp, peer, "llama-server")
        times = {"kiln": [], "llama.cpp": []}
        for r in range(a.rounds):
            body = fill(base, random.Random(r))
            body["system"][0]["text"] = f"x-anthropic-billing-header: cc_version=2.1.197.{r:03d}; round {r}"
            body["max_tokens"] = 1
            body["stream"] = False
            body.pop("thinking", None)
            for who, port in (("kiln", kp), ("llama.cpp", lp)) if r % 2 == 0 else (("llama.cpp", lp), ("kiln", kp)):
                t, n, cached = request(port, body)
                times[who].append(t)
                print(f"round {r}: {who:9s} {t:6.2f} s ({n} prompt tokens, {cached} read from a cache)", flush=True)
        km, lm = statistics.median(times["kiln"]), statistics.median(times["llama.cpp"])
        print(f"\ncold Claude Code first request, {a.threads} threads, {os.path.basename(a.model)}: "
              f"kiln {km:.2f} s, llama.cpp {lm:.2f} s, kiln / llama.cpp = {km / lm:.2f}")
    finally:
        for p in (kiln, peer):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
