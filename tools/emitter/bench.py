"""Measure the emitter's ceiling: N concurrent streams, achieved chunks/s, and the emitter's own lateness.

The client here is deliberately cruder than servelab's (raw asyncio Protocol, uvloop when installed,
counting events with bytes.count instead of parsing them), so that on one host it costs less per chunk
than the emitter does. Each stream is a keep-alive connection that sends the next request as soon as
the previous one ends; starts are spread over one request's lifetime so deadlines are spread too.

    python tools/emitter/bench.py --streams 64 512 2000 --itl-ms 5 --max-tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

EMITTER = Path(__file__).with_name("emitter.py")
EVENT = b"data: {"
END = b"\r\n0\r\n\r\n"


class StreamClient(asyncio.Protocol):
    """One keep-alive connection sending completion requests back to back; counts token events."""

    def __init__(self, request: bytes, totals: dict[str, int], stop_at: float) -> None:
        self.request = request
        self.totals = totals
        self.stop_at = stop_at
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        joined = self.tail + data
        self.totals["events"] += joined.count(EVENT)
        self.tail = joined[-6:]
        if joined.endswith(END):
            self.totals["responses"] += 1
            self.tail = b""
            if time.monotonic() < self.stop_at:
                self.transport.write(self.request)  # type: ignore[union-attr]
            else:
                self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its children processes (workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        pids += [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def http_json(url: str, method: str = "GET") -> dict:
    with urllib.request.urlopen(
        urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    ) as response:
        return json.loads(response.read())


async def measure(
    url: str, streams: int, max_tokens: int, ramp_s: float, window_s: float, emitter_pid: int | None
) -> dict:
    """Run `streams` streams; count events in [ramp_s, ramp_s + window_s]."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(
        {"model": "m", "prompt": "calibrate the client", "max_tokens": max_tokens, "stream": True}
    ).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    totals = {"events": 0, "responses": 0}
    start = time.monotonic()
    stop_at = start + ramp_s + window_s
    clients: list[StreamClient] = []

    async def open_one(index: int) -> None:
        await asyncio.sleep(ramp_s * index / streams * 0.9)
        _, client = await loop.create_connection(
            lambda: StreamClient(request, totals, stop_at), host, int(port)
        )
        clients.append(client)

    openers = asyncio.gather(*(open_one(index) for index in range(streams)))
    await asyncio.sleep(ramp_s)
    await openers
    http_json(f"{url}/emitter/reset", "POST")
    events_before = totals["events"]
    cpu_client_before = time.process_time()
    cpu_emitter_before = cpu_seconds(emitter_pid) if emitter_pid else 0.0
    window_start = time.monotonic()
    await asyncio.sleep(window_s)
    elapsed = time.monotonic() - window_start
    events = totals["events"] - events_before
    cpu_client = time.process_time() - cpu_client_before
    cpu_emitter = (cpu_seconds(emitter_pid) - cpu_emitter_before) if emitter_pid else None
    stats = http_json(f"{url}/emitter/stats")
    await asyncio.wait([client.closed for client in clients], timeout=30)
    return {
        "streams": streams,
        "chunks_per_s": events / elapsed,
        "emitter_cpu": cpu_emitter / elapsed if cpu_emitter is not None else None,
        "client_cpu": cpu_client / elapsed,
        "lateness_us": stats["lateness_us"],
        "write_pauses": stats["write_pauses"],
        "tokens_per_write": stats["tokens"] / stats["writes"] if stats["writes"] else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 512, 2000])
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument(
        "--window-s",
        type=float,
        default=5.0,
        help="measured seconds per point, after one request lifetime of ramp",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tick-us", type=float, default=200.0, help="the emitter's timer wheel slot")
    parser.add_argument("--url", default=None, help="measure a running emitter instead of starting one")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON line per point instead of a table"
    )
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    process = None
    url = args.url
    if url is None:
        command = [
            sys.executable,
            str(EMITTER),
            "--port",
            "0",
            "--ttft-ms",
            str(args.ttft_ms),
            "--itl-ms",
            str(args.itl_ms),
        ]
        command += ["--workers", str(args.workers), "--tick-us", str(args.tick_us)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        url = process.stdout.readline().split()[-1]  # type: ignore[union-attr]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    lifetime_s = (args.ttft_ms + args.itl_ms * (args.max_tokens - 1)) / 1000
    target_per_stream = args.max_tokens / lifetime_s if lifetime_s else float("inf")
    if not args.json:
        print(
            f"itl {args.itl_ms} ms, ttft {args.ttft_ms} ms, {args.max_tokens} tokens/request, workers {args.workers}"
        )
        print(
            "| streams | target chunks/s | achieved chunks/s | emitter lateness p50 / p99 / max (ms) "
            "| tokens/write | emitter CPU | client CPU |"
        )
        print("|---:|---:|---:|---|---:|---:|---:|")
    try:
        for streams in args.streams:
            point = run(
                measure(
                    url,
                    streams,
                    args.max_tokens,
                    max(1.0, lifetime_s),
                    args.window_s,
                    process.pid if process else None,
                )
            )
            if args.json:
                print(json.dumps(point), flush=True)
                continue
            late = point["lateness_us"]
            emitter_cpu = f"{point['emitter_cpu']:.0%}" if point["emitter_cpu"] is not None else "-"
            print(
                f"| {streams} | {streams * target_per_stream:,.0f} "
                f"| {point['chunks_per_s']:,.0f} "
                f"| {late['p50'] / 1000:.2f} / {late['p99'] / 1000:.2f} / {late['max'] / 1000:.2f} "
                f"| {point['tokens_per_write']:.2f} | {emitter_cpu} | {point['client_cpu']:.0%} |",
                flush=True,
            )
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
