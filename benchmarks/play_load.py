"""Load test of minwm-play: several websocket clients sending keys at 20 Hz against one server.

    python benchmarks/play_load.py                          # 4 clients, 60 s, the shipped model
    python benchmarks/play_load.py --clients 2 --duration 10 --truth --out outputs/play_load.json

Starts ``python -m minwm_env.play`` on a free loopback port in its own process, connects
``--clients`` websocket clients, and has each send a step with a random set of held keys
``--rate`` times a second for ``--duration`` seconds while it reads everything the server
sends (the server keeps only the latest waiting step per world, so a fast sender never builds a
queue; chunks served = steps the model actually ran). Every 5 s it samples the server
process's resident memory (VmRSS).

Reports per client the chunks and frames served, its chunk latency (median, p95, from the
server's headers) and errors (error messages, unexpected closes, failed sends: must be 0), and
the server's RSS once all worlds are open ("start"), at the end, and its samples in between
(flat memory: no growth with time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

KEYS = ("w", "s", "a", "d", "l", "j", "i", "k")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def client(url: str, index: int, duration: float, rate: float, truth: bool, started: asyncio.Event) -> dict:
    import aiohttp

    stats = {"client": index, "chunks": 0, "frames": 0, "truth_frames": 0, "errors": 0, "error_messages": [],
             "latency_ms": []}
    rng = random.Random(index)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.rstrip("/") + "/ws", max_msg_size=0) as ws:
            async def reader():
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        message = json.loads(msg.data)
                        if message["type"] == "chunk":
                            stats["chunks"] += 1
                            stats["latency_ms"].append(message["latency_ms"])
                        elif message["type"] == "error":
                            stats["errors"] += 1
                            stats["error_messages"].append(message["message"])
                        elif message["type"] == "start":
                            started.set()
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        if msg.data[0] == 1:
                            stats["frames"] += 1
                        elif msg.data[0] == 2:
                            stats["truth_frames"] += 1
                    else:
                        break
                if not stopping:
                    stats["errors"] += 1
                    stats["error_messages"].append("the server closed the connection")

            stopping = False
            reading = asyncio.create_task(reader())
            if truth:
                await ws.send_str(json.dumps({"type": "truth", "on": True}))
            began = time.monotonic()
            tick = 0
            while time.monotonic() - began < duration:
                keys = rng.sample(KEYS, rng.choice((1, 1, 2)))
                try:
                    await ws.send_str(json.dumps({"type": "step", "keys": keys}))
                except Exception as err:  # noqa: BLE001 - counted, reported
                    stats["errors"] += 1
                    stats["error_messages"].append(f"send failed: {err}")
                    break
                tick += 1
                await asyncio.sleep(max(0.0, began + tick / rate - time.monotonic()))
            await asyncio.sleep(1.0)  # let the last chunk arrive
            stopping = True
            await ws.close()
            await reading
    latency = stats.pop("latency_ms")
    stats["sent"] = tick
    stats["latency_ms_median"] = round(statistics.median(latency), 1) if latency else None
    stats["latency_ms_p95"] = round(sorted(latency)[int(0.95 * (len(latency) - 1))], 1) if latency else None
    stats["error_messages"] = stats["error_messages"][:5]
    return stats


async def run(args, url: str, pid: int) -> dict:
    events = [asyncio.Event() for _ in range(args.clients)]
    rss_idle = rss_mb(pid)
    tasks = [asyncio.create_task(client(url, i, args.duration, args.rate, args.truth, events[i]))
             for i in range(args.clients)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
    rss_start = rss_mb(pid)
    samples = []

    async def sampler():
        while True:
            await asyncio.sleep(5.0)
            samples.append(round(rss_mb(pid), 1))
    sampling = asyncio.create_task(sampler())
    results = await asyncio.gather(*tasks)
    rss_end = rss_mb(pid)
    sampling.cancel()
    return {"clients": results, "rss_mb": {"server_idle": round(rss_idle, 1), "start": round(rss_start, 1),
                                           "end": round(rss_end, 1), "samples_every_5s": samples}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of key presses per client")
    parser.add_argument("--rate", type=float, default=20.0, help="key messages per second per client")
    parser.add_argument("--model", default="minwm-default")
    parser.add_argument("--truth", action="store_true", help="show the ground truth too (twice the frames)")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (JSON)")
    args = parser.parse_args(argv)

    command = [sys.executable, "-m", "minwm_env.play", "--port", "0", "--model", args.model,
               "--max-clients", str(args.clients), "--format", args.format, "--idle-timeout", "600"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        began = time.monotonic()
        while url is None and time.monotonic() - began < 120:
            line = server.stdout.readline()
            if not line:
                raise RuntimeError(f"minwm-play exited early with code {server.wait()}")
            match = re.search(r"open (http://\S+)", line)
            url = match.group(1) if match else None
        if url is None:
            raise RuntimeError("minwm-play did not report its address within 120 s")
        # keep reading the server's log so its pipe never fills
        log_lines = []

        def drain():
            for line in server.stdout:
                log_lines.append(line)
        import threading
        threading.Thread(target=drain, daemon=True).start()
        report = asyncio.run(run(args, url, server.pid))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    clients = report["clients"]
    report.update({
        "config": {"clients": args.clients, "duration_s": args.duration, "rate_hz": args.rate, "model": args.model,
                   "truth": args.truth, "format": args.format, "cpus": os.cpu_count()},
        "errors": sum(c["errors"] for c in clients),
        "frames_per_client": [c["frames"] for c in clients],
        "frames_per_s_per_client": [round(c["frames"] / args.duration, 1) for c in clients],
        "server_log_errors": [line.rstrip() for line in log_lines if "Traceback" in line or "ERROR" in line][:5],
    })
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
