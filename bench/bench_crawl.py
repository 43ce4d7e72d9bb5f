"""Crawl throughput: ``curate crawl`` of 20,000 small PNGs from a local ``python -m http.server`` beside img2dataset.

Both tools fetch the same URL list from the same server in the same run, each as a fresh subprocess, in rotating
order, ``--repeat`` times. The images are Fashion-MNIST PNGs (28x28, about 300-900 bytes) picked with a fixed seed
from ``bench/.out/fashion-png`` (written from the idx files on first use).

- curate: ``curate crawl urls.txt --allow-private`` with its defaults (one worker process per core, at most 4
  requests per host in all: the polite default), plus ``--curate-args``. It checks robots.txt, keeps a journal,
  fully decodes and sha256-hashes every image and commits a version with the bytes in blob packs.
- img2dataset (installed only here, in ``bench/.out/i2d-venv``; never a curate dependency): output webdataset,
  2 processes, 16 threads, as the issue specifies; ``default`` keeps its default resize (256 px border, JPEG), and
  ``keep`` (``--resize_mode no --skip_reencode True --encode_format png --encode_quality 9``) keeps the original
  bytes like curate (it still decodes each image once to check it).

Columns: images/s = images / wall time of the whole command (start-up and commit included), median (min-max);
ratio = curate median / img2dataset-default median. images per CPU-s = images / (user + system CPU of the command
and its children): steadier than wall time on a shared machine. Peak RSS: largest sum over the process tree.
Server CPU-s: what the http.server process spent during the run (the same server serves both).

Run (from the repository root)::

    nice -n 15 .venv/bin/python bench/bench_crawl.py --repeat 3
    nice -n 15 .venv/bin/python bench/bench_crawl.py --profile --n 5000   # where curate's time goes (cProfile)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    CURATE,
    FASHION,
    OUT,
    fmt_runs,
    list_files,
    machine,
    median,
    print_table,
    reset_dir,
    run_measured,
    write_fashion_png_tree,
)

I2D_KEEP = ["--resize_mode", "no", "--skip_reencode", "True", "--encode_format", "png", "--encode_quality", "9"]


def ensure_i2d(venv: Path) -> Path:
    """The img2dataset console script of ``venv``, installed with pip on first use."""
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        print(f"# installing img2dataset into {venv} (bench only)", file=sys.stderr)
        # The interpreter of the base installation, not this venv's: img2dataset must not see curate's packages.
        base = Path(sys.base_prefix) / "bin" / "python3"
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    """``python -m http.server`` on 127.0.0.1:port serving ``root``; returns once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("http.server did not start")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_urls(root: Path, n: int, port: int, dst: Path) -> int:
    files = [os.path.relpath(p, root) for p in list_files(root)]
    random.Random(0).shuffle(files)
    chosen = sorted(files[:n])
    dst.write_text("".join(f"http://127.0.0.1:{port}/{f}\n" for f in chosen))
    return len(chosen)


def i2d_successes(folder: Path) -> int:
    return sum(json.loads(p.read_text()).get("successes", 0) for p in folder.glob("*_stats.json"))


def profile(urls: Path, ws: Path, extra: list[str]) -> None:
    """Run curate crawl under cProfile and print where the time goes, by library and by function."""
    import pstats

    out = OUT / "crawl-profile.out"
    reset_dir(ws)
    # One process: cProfile does not follow forked workers (each would profile the same code anyway).
    cmd = [sys.executable, "-m", "cProfile", "-o", str(out), CURATE, "crawl", str(urls), "-w", str(ws), "--allow-private"]
    cmd += ["--json", "--workers", "1", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    st = json.loads(res.stdout)["stats"]
    print(f"\nprofiled run: {st['urls']:,} URLs in {st['crawl_seconds']:.1f}s (profiler overhead included)\n")
    stats = pstats.Stats(str(out))
    groups: dict[str, float] = {}
    rules = [
        ("httpx/httpcore/h11 (HTTP)", r"/(httpx|httpcore|h11)/"),
        ("PIL (decode, verify)", r"/PIL/"),
        ("curate.crawl + stage", r"/curate/(crawl|stages/crawl)"),
        ("curate (images, blobs, workspace ...)", r"/curate/"),
        ("anyio (httpcore's locks)", r"/anyio/"),
        ("asyncio + selectors", r"asyncio|selectors"),
        ("pyarrow / pandas", r"pyarrow|pandas"),
        ("imports (importlib)", r"importlib|<frozen"),
    ]
    total = 0.0
    for (file, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        where = file if file != "~" else name
        key = next((label for label, rx in rules if re.search(rx, where)), None)
        if key is None:
            sockets = file == "~" and re.search(r"socket|select|poll", name)
            key = "socket and poll system calls" if sockets else "builtins called by every layer, json, urllib ..."
        groups[key] = groups.get(key, 0.0) + tottime
    print_table(
        ["where", "seconds (own time)", "share"],
        [[k, f"{v:.2f}", f"{v / total:.0%}"] for k, v in sorted(groups.items(), key=lambda kv: -kv[1])],
    )
    print()
    stats.sort_stats("tottime").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="images to fetch")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--png-dir", type=Path, default=OUT / "fashion-png", help="PNG tree served over HTTP")
    ap.add_argument("--i2d-venv", type=Path, default=OUT / "i2d-venv")
    ap.add_argument("--i2d-modes", default="default,keep", help="comma-separated: default, keep")
    ap.add_argument("--curate-args", default="", help="extra arguments for curate crawl, e.g. '--per-host 8'")
    ap.add_argument("--profile", action="store_true", help="only profile one curate run and print where the time goes")
    args = ap.parse_args()

    write_fashion_png_tree(args.png_dir, FASHION)
    port = free_port()
    urls = OUT / "crawl-urls.txt"
    n = write_urls(args.png_dir, args.n, port, urls)
    extra = args.curate_args.split()
    server = start_server(args.png_dir, port)
    ws, i2d_out = Path("/tmp/curate-bench-crawl"), Path("/tmp/curate-bench-crawl-i2d")
    try:
        if args.profile:
            profile(urls, ws, extra)
            return
        i2d = ensure_i2d(args.i2d_venv)
        jobs = ["curate", *(f"i2d-{m.strip()}" for m in args.i2d_modes.split(",") if m.strip())]
        wall: dict[str, list[float]] = {j: [] for j in jobs}
        cpu: dict[str, list[float]] = {j: [] for j in jobs}
        rss: dict[str, list[int]] = {j: [] for j in jobs}
        srv: dict[str, list[float]] = {j: [] for j in jobs}
        loads: list[float] = []
        for r in range(args.repeat):
            order = jobs[r % len(jobs) :] + jobs[: r % len(jobs)]  # rotate: nobody always runs first
            for job in order:
                load = os.getloadavg()[0]
                loads.append(load)
                s0 = cpu_seconds(server.pid)
                if job == "curate":
                    reset_dir(ws)
                    run = run_measured([CURATE, "crawl", str(urls), "-w", str(ws), "--allow-private", "--json", *extra])
                    got = run.result["stats"]["summary"]["included"]
                    inner = f"{run.result['stats']['crawl_seconds']:.1f}s crawling"
                else:
                    reset_dir(i2d_out)
                    cmd = [str(i2d), "--url_list", str(urls), "--input_format", "txt", "--output_format", "webdataset"]
                    cmd += ["--output_folder", str(i2d_out), "--processes_count", "2", "--thread_count", "16"]
                    run = run_measured(cmd + (I2D_KEEP if job == "i2d-keep" else []))
                    got, inner = i2d_successes(i2d_out), ""
                if got != n:
                    raise SystemExit(f"{job}: {got} of {n} images fetched")
                srv[job].append(cpu_seconds(server.pid) - s0)
                wall[job].append(run.seconds)
                cpu[job].append(run.cpu_seconds)
                rss[job].append(run.peak_tree_rss)
                msg = f"# run {r + 1} {job}: {n:,} images, {run.seconds:.1f}s wall {inner}, {run.cpu_seconds:.1f} CPU-s"
                print(f"{msg}, load {load:.1f}", file=sys.stderr)
        loads.append(os.getloadavg()[0])
    finally:
        server.kill()
        server.wait()
        reset_dir(ws)
        reset_dir(i2d_out)

    print(f"\ncrawl of {n:,} PNGs from python -m http.server, {args.repeat} runs each, {dt.date.today()}, {machine()}")
    print(f"load average (1 min) at the start of each run: {', '.join(f'{x:.1f}' for x in loads)}\n")
    names = {
        "curate": f"curate crawl{' ' + args.curate_args if args.curate_args else ''}",
        "i2d-default": "img2dataset (2 proc x 16 threads, default resize)",
        "i2d-keep": "img2dataset (2 proc x 16 threads, originals kept)",
    }
    base = "i2d-default" if "i2d-default" in jobs else jobs[-1]
    base_ips, base_cpu = [n / s for s in wall[base]], [n / s for s in cpu[base]]
    rows = []
    for job in jobs:
        ips, per_cpu = [n / s for s in wall[job]], [n / s for s in cpu[job]]
        rows.append(
            [
                names[job],
                fmt_runs(ips),
                f"{median(ips) / median(base_ips):.2f}",
                fmt_runs(per_cpu),
                f"{median(per_cpu) / median(base_cpu):.2f}",
                f"{median(rss[job]) / 2**20:,.0f}",
                f"{median(srv[job]):.1f}",
            ]
        )
    print_table(["job", "images/s (wall)", "ratio", "images per CPU-s", "ratio CPU", "peak RSS MiB", "server CPU-s"], rows)


if __name__ == "__main__":
    main()
