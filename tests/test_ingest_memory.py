"""Archive ingest memory is bounded by bytes in flight, not by member count.

A tar.gz of a few MB with six 60 MB members (zeros and solid-colour images, which compress to almost nothing)
once took 2 GB: members were read whole, 512 to a batch, and written to a blob pack in one piece. The peak
resident memory of a real ``curate ingest`` process is measured with ``wait4``, which reports it for that
process alone.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile

import pytest
from helpers import clean_env

from curate.workspace import Workspace

MEMBER = 60_000_000
SIDE = 4472  # 4472 * 4472 * 3 bytes of pixels: a 60 MB BMP / uncompressed PNG, 20 MP (under --max-pixels)


@pytest.fixture(scope="module")
def six_big_members(tmp_path_factory) -> tuple[str, dict[str, tuple[str | None, str | None]]]:
    """The archive and its truth: member -> (reason, sha256 of the stored bytes for ok members)."""
    from PIL import Image

    img = Image.new("RGB", (SIDE, SIDE), (200, 30, 90))
    bmp, png = io.BytesIO(), io.BytesIO()
    img.save(bmp, "BMP")
    img.save(png, "PNG", compress_level=0)
    zeros = [bytes(MEMBER - 1) + bytes([i]) for i in range(4)]  # distinct: each keeps a row of its own
    members = {
        "a/zeros0.png": zeros[0],
        "a/solid.bmp": bmp.getvalue(),
        "b/zeros1.jpg": zeros[1],
        "b/solid.png": png.getvalue(),
        "a/zeros2.png": zeros[2],
        "b/zeros3.png": zeros[3],
    }
    path = tmp_path_factory.mktemp("big") / "six.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, data in members.items():
            assert 59_000_000 < len(data) < 64 << 20  # each under the default --max-bytes: all are read
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert path.stat().st_size < 5_000_000
    truth = {
        name: ("not_an_image", None) if "zeros" in name else (None, hashlib.sha256(data).hexdigest())
        for name, data in members.items()
    }
    return str(path), truth


# A child's ru_maxrss also counts the memory of the process it was forked from (Linux keeps the high-water
# mark across exec), so a small launcher starts curate and reports the peak of that one process.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
sys.stderr.write(proc.stderr.read().decode())
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def test_archive_of_large_members_stays_under_500_mb(tmp_path, six_big_members):
    src, truth = six_big_members
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "curate.cli", "ingest", src, "-w", str(ws), "-j", "2", "--max-error-fraction", "1"]
    launch = [sys.executable, "-c", _MEASURE, *cmd]
    res = subprocess.run(launch, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    rc, maxrss = map(int, res.stdout.split())
    assert rc == 0, res.stderr
    peak_mb = maxrss / 1024  # KiB on Linux
    assert peak_mb < 500, f"peak RSS {peak_mb:.0f} MB"  # it was 1.8 GB with one worker, 2.2 GB with two
    rows = {r["source"].split("::", 1)[1]: r for r in Workspace(ws).samples().to_pylist()}
    assert {name: (r["reason"], r["sample_id"] if r["status"] == "ok" else None) for name, r in rows.items()} == truth
    assert {name: r["label"] for name, r in rows.items()} == {name: name[0] for name in truth}
    kept = [r for r in rows.values() if r["pack"]]
    stored = Workspace(ws).blobs.get_many([r["sample_id"] for r in kept], [r["pack"] for r in kept])
    assert {hashlib.sha256(d).hexdigest() for d in stored.values()} == {h for _, h in truth.values() if h}
