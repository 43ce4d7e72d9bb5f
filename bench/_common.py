"""Shared helpers for the benchmarks in bench/: data paths, the PNG tree writer, timing, RSS sampling, tables.

Not a benchmark itself; the scripts import it (``from _common import ...``) when run as
``.venv/bin/python bench/<script>.py``. Generated data goes to ``bench/.out/`` (git-ignored) or /tmp.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / ".out"
FASHION = REPO.parent / "shared" / "datasets" / "fashion-mnist"
CURATE = str(Path(sys.executable).with_name("curate")) if Path(sys.executable).with_name("curate").exists() else "curate"


def machine() -> str:
    """One line describing where the numbers came from."""
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


# --------------------------------------------------------------------------------------------------- data
def _encode_png(args: tuple[bytes, int, int]) -> bytes:
    from PIL import Image

    raw, h, w = args
    buf = io.BytesIO()
    Image.frombytes("L", (w, h), raw).save(buf, format="PNG")  # the same encoding curate uses for idx input
    return buf.getvalue()


def write_fashion_png_tree(dst: Path, src: Path = FASHION, *, workers: int = 2) -> int:
    """Write the Fashion-MNIST idx files as an ImageFolder tree ``dst/<label>/<split>-<index>.png``.

    The PNG bytes are exactly what ``curate ingest`` makes of the idx files, so both inputs give the same
    sample ids. Reuses ``dst`` when a previous call finished it (``.done`` holds the file count).

    Returns:
        The number of PNG files in the tree.
    """
    done = dst / ".done"
    if done.exists():
        return int(done.read_text())
    from curate.sources.idx import find_idx_pairs, read_idx

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    n = 0
    with Pool(workers) as pool:
        for img_path, lab_path in find_idx_pairs(src):
            images = read_idx(img_path)
            labels = read_idx(lab_path) if lab_path else None
            split = "train" if img_path.name.startswith("train") else "test"
            h, w = images.shape[1:]
            pngs = pool.imap(_encode_png, ((images[i].tobytes(), h, w) for i in range(len(images))), chunksize=512)
            for i, data in enumerate(pngs):
                label = str(int(labels[i])) if labels is not None else "unlabeled"
                folder = dst / label
                folder.mkdir(exist_ok=True)
                (folder / f"{split}-{i:05d}.png").write_bytes(data)
                n += 1
    done.write_text(str(n))
    return n


def list_files(root: Path) -> list[str]:
    """Every non-hidden file below ``root`` in sorted walk order (what the bare loops are given)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return out


# ------------------------------------------------------------------------------------------------ running
@dataclass
class Run:
    """One measured subprocess: wall seconds, parsed ``--json`` output, peak memory."""

    seconds: float
    result: dict[str, Any] = field(default_factory=dict)
    peak_tree_rss: int = 0  # bytes: largest sampled sum of RSS over the process and all its descendants
    max_single_rss: int = 0  # bytes: largest RSS of any one process of the tree (kernel accounting, exact)
    cpu_seconds: float = 0.0  # user + system CPU of the command and every child it waited for (time -v)
    stdout: str = ""


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(pid: int) -> int:
    """Sum of RSS of ``pid`` and all its descendants (shared pages counted in each: an upper bound)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _rss(p)
        stack.extend(_children(p))
    return total


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None, interval: float = 0.05) -> Run:
    """Run ``cmd`` under ``/usr/bin/time -v`` (when present), time it, and sample the RSS of its process tree.

    ``cpu_seconds`` is user + system time of the command and the children it reaped (forked pool workers included):
    far less sensitive than wall time to other jobs on a shared machine. Workers of a fork server (the local
    executor's pool once the driver holds over ``FORK_MAX_RSS``) are the server's children, and the server is never
    waited for: their CPU is missing from it (a 6-batch CPU-bound check: 0.44 s reported against 1.07 s forked).
    ``peak_tree_rss`` is the largest sum of RSS over the process and all its descendants (sampled every
    ``interval`` s); ``max_single_rss`` is the kernel's max RSS of the largest single process the command waited
    for (from time -v; again not a fork server's workers).
    Stdout is parsed as JSON when it is JSON.

    Raises:
        RuntimeError: the command failed (its stderr is in the message).
    """
    timed = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else list(cmd)
    t0 = time.perf_counter()
    proc = subprocess.Popen(timed, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-4000:]}")
    single, cpu = 0, 0.0
    for line in err.splitlines():
        if "Maximum resident set size" in line:
            single = int(line.rsplit(":", 1)[1]) * 1024
        elif "User time (seconds)" in line or "System time (seconds)" in line:
            cpu += float(line.rsplit(":", 1)[1])
    try:
        result = json.loads(out)
    except json.JSONDecodeError:
        result = {}
    return Run(seconds=secs, result=result, peak_tree_rss=peak, max_single_rss=single, cpu_seconds=cpu, stdout=out)


# ------------------------------------------------------------------------------------------------ reporting
def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def fmt_runs(xs: Sequence[float], spec: str = ",.0f") -> str:
    """``median (min-max)`` of a list of figures."""
    return f"{format(median(xs), spec)} ({format(min(xs), spec)}-{format(max(xs), spec)})"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table, ready to paste into BENCHMARKS.md."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def reset_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
