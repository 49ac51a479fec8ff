"""Load test of a running `nmt-serve`: K concurrent clients for a fixed time, one sentence each per
request; requests/s, segments/s, latency percentiles, status codes, and every answer checked
against `nmt-translate`'s output for the same sentence and options.

    nmt-translate RUN --beam 5 -i test.de -o expected.en
    nmt-serve RUN --port 8000 &
    python scripts/load_test.py --url http://127.0.0.1:8000 --clients 32 --seconds 60 --beam 5 \
        --source test.de --expected expected.en [--pid SERVER_PID] [--json out.json]

Writes the figures as one JSON line to stdout (and to a file with --json). With --pid, the peak
resident memory (VmHWM) of the server and of each of its search workers is read at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path


class Http:
    """One keep-alive HTTP/1.1 connection, written by hand: the client shares the server's cores,
    and a general-purpose client spends several times the CPU per request that this one does."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = parsed.hostname, parsed.port or 80, timeout
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        reused = self.streams is not None
        try:
            return await asyncio.wait_for(self._exchange(method, path, body), self.timeout)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            self.close()
            if not reused:
                raise
        except BaseException:
            self.close()  # a half-read answer would poison the next request
            raise
        # The server closed the idle connection (keep-alive timeout) as the request went out.
        return await self.request(method, path, body)

    async def _exchange(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)
        status_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        headers = {name.lower(): value for name, value in headers.items()}
        answer = await reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), headers, answer

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def client(number: int, args, sources: list[str], expected: list[str] | None, stop: float, stats) -> None:
    position = number * 7919 % len(sources)  # clients start at different sentences
    http = Http(args.url, args.timeout)
    while time.monotonic() < stop:
        index = position % len(sources)
        position += 1
        body = json.dumps({"segments": [sources[index]], "beam": args.beam}).encode()
        started = time.perf_counter()
        try:
            status, headers, answer = await http.request("POST", "/translate", body)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            stats["status"][type(error).__name__] += 1
            continue
        stats["status"][status] += 1
        if status == 200:
            stats["latency"].append(time.perf_counter() - started)
            text = json.loads(answer)["translations"][0]["text"]
            if expected is not None and text != expected[index]:
                stats["different"].append((index, text, expected[index]))
        elif status == 503:
            if "retry-after" not in headers:
                stats["status"]["503 without Retry-After"] += 1
            if args.backoff:
                await asyncio.sleep(args.backoff)
    http.close()


async def run(args) -> dict:
    sources = Path(args.source).read_text(encoding="utf-8").splitlines()
    expected = Path(args.expected).read_text(encoding="utf-8").splitlines() if args.expected else None
    if expected is not None and len(expected) != len(sources):
        sys.exit(f"{args.expected} has {len(expected)} lines, {args.source} {len(sources)}")
    stats = {"status": Counter(), "latency": [], "different": []}
    http = Http(args.url, args.timeout)
    if (await http.request("GET", "/ready"))[0] != 200:
        sys.exit(f"{args.url}/ready does not answer 200")
    started = time.monotonic()
    stop = started + args.seconds
    await asyncio.gather(*(client(k, args, sources, expected, stop, stats) for k in range(args.clients)))
    elapsed = time.monotonic() - started
    body = json.dumps({"segments": [sources[0]], "beam": args.beam}).encode()
    after = (await http.request("POST", "/translate", body))[0]
    http.close()
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
        "answers_after": after,
    }
    if args.pid:
        peaks = [peak_rss_mib(pid) for pid in [args.pid, *children(args.pid)]]
        result["server_peak_rss_mib"] = peaks[0]
        result["workers_peak_rss_mib"] = peaks[1:]
    return result


def children(pid: int) -> list[int]:
    return [
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    ]


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM); pages shared with the server count in each."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


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
