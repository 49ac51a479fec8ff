"""Load test of a running `nmt-serve`: K concurrent clients for a fixed time, one sentence each per
request; requests/s, segments/s, latency percentiles, status codes, and every answer checked
against `nmt-translate`'s output for the same sentence and options.

    nmt-translate RUN --beam 5 -i test.de -o expected.en
    nmt-serve RUN --port 8000 &
    python scripts/load_test.py --url http://127.0.0.1:8000 --clients 32 --seconds 60 --beam 5 \
        --source test.de --expected expected.en [--pid SERVER_PID] [--json out.json]

Writes a Markdown row to stdout (and the figures as JSON with --json). With --pid, the server's
peak resident memory (VmHWM) is read at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx


async def client(
    number: int, http: httpx.AsyncClient, args, sources: list[str], expected: list[str] | None, stop: float, stats
) -> None:
    position = number * 7919 % len(sources)  # clients start at different sentences
    while time.monotonic() < stop:
        index = position % len(sources)
        position += 1
        started = time.perf_counter()
        try:
            answer = await http.post("/translate", json={"segments": [sources[index]], "beam": args.beam})
        except httpx.HTTPError as error:
            stats["status"][type(error).__name__] += 1
            continue
        stats["status"][answer.status_code] += 1
        if answer.status_code == 200:
            stats["latency"].append(time.perf_counter() - started)
            text = answer.json()["translations"][0]["text"]
            if expected is not None and text != expected[index]:
                stats["different"].append((index, text, expected[index]))
        elif answer.status_code == 503:
            if "retry-after" not in answer.headers:
                stats["status"]["503 without Retry-After"] += 1
            if args.backoff:
                await asyncio.sleep(args.backoff)


async def run(args) -> dict:
    sources = Path(args.source).read_text(encoding="utf-8").splitlines()
    expected = Path(args.expected).read_text(encoding="utf-8").splitlines() if args.expected else None
    if expected is not None and len(expected) != len(sources):
        sys.exit(f"{args.expected} has {len(expected)} lines, {args.source} {len(sources)}")
    stats = {"status": Counter(), "latency": [], "different": []}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as http:
        (await http.get("/ready")).raise_for_status()
        started = time.monotonic()
        stop = started + args.seconds
        await asyncio.gather(*(client(k, http, args, sources, expected, stop, stats) for k in range(args.clients)))
        elapsed = time.monotonic() - started
        after = await http.post("/translate", json={"segments": [sources[0]], "beam": args.beam})
    latency = sorted(stats["latency"])
    ok = len(latency)

    def percentile(p: float) -> float:
        return 1000 * latency[min(ok - 1, int(p * ok))] if ok else float("nan")

    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "beam": args.beam,
        "requests_per_s": round(sum(stats["status"].values()) / elapsed, 1),
        "segments_per_s": round(ok / elapsed, 1),
        "p50_ms": round(percentile(0.50), 1),
        "p95_ms": round(percentile(0.95), 1),
        "p99_ms": round(percentile(0.99), 1),
        "mean_ms": round(1000 * statistics.fmean(latency), 1) if ok else None,
        "status": {str(code): count for code, count in sorted(stats["status"].items(), key=str)},
        "different": len(stats["different"]),
        "first_differences": stats["different"][:3],
        "answers_after": after.status_code,
    }
    if args.pid:
        for line in Path(f"/proc/{args.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                result["server_peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--source", required=True, help="one sentence per line")
    parser.add_argument("--expected", help="nmt-translate's output for --source with the same options")
    parser.add_argument("--timeout", type=float, default=120, help="per request, client side")
    parser.add_argument("--backoff", type=float, default=0.0, help="seconds a client waits after a 503")
    parser.add_argument("--pid", type=int, help="the server's pid: report its peak resident memory")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    errors = sum(count for code, count in result["status"].items() if code not in ("200", "503"))
    return 1 if errors or result["different"] or result["answers_after"] != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
