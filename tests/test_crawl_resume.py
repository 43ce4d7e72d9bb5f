"""A killed crawl resumes where it stopped without fetching anything twice; ``--retry-failed`` refetches only failures.

The kill test runs the real console script, holds a few requests on the server (a gate) until everything else is
in the journal, sends ``kill -9``, and runs the same command again. The server counts, per path, the responses it
completed: every URL must be served exactly once over both runs, and the final table must equal the table of an
uninterrupted crawl of an identical site.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from crawl_sites import Gate, Site, html, sequence, static, wait_for
from helpers import clean_env, curate_exe

from curate.stages.crawl import CrawlConfig
from curate.workspace import Workspace
from tests.conftest import crawl

N_PAGES, PER_PAGE = 4, 8


def gallery(png_bytes, gate: Gate | None) -> dict[str, object]:
    """/ links /p0/ .. /p3/; each page shows PER_PAGE images, one of them missing. Gated (held on the first
    request): page /p3/ (its images are unknown until it is fetched) and image 0 of /p0/ (a finished page's
    child that was not fetched yet: only the journal knows it must still be fetched)."""
    hold = gate.route if gate is not None else (lambda r: r)
    routes: dict[str, object] = {"/": html("".join(f'<a href="/p{i}/">p{i}</a>' for i in range(N_PAGES)))}
    for i in range(N_PAGES):
        imgs = "".join(f'<img src="/img/{i}-{j}.png">' for j in range(PER_PAGE))
        routes[f"/p{i}/"] = hold(html(imgs)) if i == N_PAGES - 1 else html(imgs)
        for j in range(PER_PAGE):
            png = static(png_bytes(100 * i + j))
            routes[f"/img/{i}-{j}.png"] = hold(png) if (i, j) == (0, 0) else png
        routes[f"/img/{i}-{PER_PAGE - 1}.png"] = static(b"gone", "text/plain", status=404)
    return routes


def outcome(ws: Workspace, port: int) -> set[tuple]:
    """(path, status, reason, sample_id of ok rows) for every row: comparable across sites on other ports."""
    return {
        (r["source"].split(str(port), 1)[1], r["status"], r["reason"], r["sample_id"] if r["status"] == "ok" else None)
        for r in ws.samples().to_pylist()
    }


def journal_lines(ws_root: Path) -> int:
    files = glob.glob(str(ws_root / "crawls" / "*" / "journal*.jsonl"))
    return sum(Path(f).read_bytes().count(b"\n") for f in files)


@pytest.mark.slow
def test_kill_9_and_resume_fetches_nothing_twice(tmp_path, png_bytes):
    args = ["--allow-private", "--concurrency", "4", "--per-host", "4", "--max-error-fraction", "1", "--json"]
    # The reference: an uninterrupted crawl of an identical site.
    with Site(gallery(png_bytes, None)) as ref_site:
        ref_ws = Workspace(tmp_path / "ref")
        crawl(ref_ws, CrawlConfig(seeds=(ref_site.url("/"),), allow_private=True, max_error_fraction=1.0))
        reference = outcome(ref_ws, ref_site.port)
    assert len(reference) == (N_PAGES * PER_PAGE), "one row per image URL"

    gate = Gate()
    with Site(gallery(png_bytes, gate)) as site:
        ws_root = tmp_path / "ws"
        cmd = [curate_exe(), "crawl", "--seed", site.url("/"), "-w", str(ws_root), *args]
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Everything but the two held requests finishes: / , p0..p2, and their images except /img/0-0.png.
            expected_done = 1 + (N_PAGES - 1) + (N_PAGES - 1) * PER_PAGE - 1
            assert wait_for(lambda: gate.held() == 2 and journal_lines(ws_root) >= expected_done, timeout=30), (
                gate.held(),
                journal_lines(ws_root),
            )
            assert journal_lines(ws_root) == expected_done
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            gate.open()
        assert proc.returncode == -signal.SIGKILL
        assert Workspace(ws_root).head() is None, "nothing was committed by the killed run"
        served_before = dict(site.served)

        res = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        st = json.loads(res.stdout)["stats"]
        assert st["mode"] == "resume" and st["resumed_urls"] == expected_done
        assert st["fetched_now"] == 1 + PER_PAGE + 1, "p3, its images, and the held image of p0"
        assert outcome(Workspace(ws_root), site.port) == reference
        served = dict(site.served)
    crawled = [p for p in served if p != "/robots.txt"]
    assert len(crawled) == 1 + N_PAGES + N_PAGES * PER_PAGE
    assert all(served[p] == 1 for p in crawled), {p: n for p, n in served.items() if n != 1}
    # Nothing the first run finished was requested again; only the two held requests were asked twice.
    assert all(site.hits[p] == 1 for p in served_before if p != "/robots.txt")
    assert site.hits["/p3/"] == 2 and site.hits["/img/0-0.png"] == 2


def wait_unlocked(ws_root: Path, timeout: float = 10.0) -> bool:
    """True once nobody holds the workspace lock (orphaned worker processes notice their parent is gone and exit)."""
    import fcntl

    def free() -> bool:
        with open(ws_root / ".lock", "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return True

    return wait_for(free, timeout=timeout)


@pytest.mark.slow
def test_kill_9_of_a_parallel_list_crawl_and_resume(tmp_path, png_bytes):
    """``--workers 2``: the parent is killed; its workers write what they finished and exit; the resume (with another
    worker count) fetches only what is left."""
    gate = Gate()
    n, held = 40, 3
    routes: dict[str, object] = {f"/img/{i}.png": static(png_bytes(500 + i)) for i in range(n)}
    routes.update({f"/img/gone-{i}.png": static(b"", "text/plain", status=404) for i in range(4)})
    routes.update({f"/img/z-{i}.png": gate.route(static(png_bytes(900 + i))) for i in range(held)})  # last in the list
    with Site(routes) as site:
        lst = tmp_path / "urls.txt"
        lst.write_text("".join(site.url(p) + "\n" for p in sorted(routes)))
        ws_root = tmp_path / "ws"
        base = [
            curate_exe(),
            "crawl",
            str(lst),
            "-w",
            str(ws_root),
            "--allow-private",
            "--per-host",
            "16",
            "--max-error-fraction",
            "1",
        ]
        proc = subprocess.Popen([*base, "--workers", "2"], env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            done = n + 4
            assert wait_for(lambda: gate.held() == held and journal_lines(ws_root) >= done, timeout=30), (
                gate.held(),
                journal_lines(ws_root),
            )
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert wait_unlocked(ws_root), "the orphaned workers exited"
        gate.open()
        assert journal_lines(ws_root) == done
        res = subprocess.run(
            [*base, "--workers", "1", "--json"], env=clean_env(), capture_output=True, text=True, timeout=60, check=False
        )
        assert res.returncode == 0, res.stderr
        st = json.loads(res.stdout)["stats"]
        assert (st["mode"], st["resumed_urls"], st["fetched_now"]) == ("resume", done, held)
        assert st["summary"]["included"] == n + held and st["summary"]["excluded"] == 4
        assert all(c == 1 for p, c in site.served.items() if p != "/robots.txt"), dict(site.served)
        assert all(site.hits[p] == (2 if "/z-" in p else 1) for p in routes)


def test_url_list_resume_after_failed_stage_fetches_nothing_again(tmp_path, png_bytes):
    routes = {f"/{i}.png": static(png_bytes(i)) for i in range(3)}
    routes.update({f"/gone-{i}.png": static(b"", "text/plain", status=404) for i in range(5)})
    with Site(routes) as site:
        lst = tmp_path / "urls.txt"
        lst.write_text("".join(site.url(p) + "\n" for p in routes))
        ws = Workspace(tmp_path / "ws")
        from curate.errors import TooManyErrors

        with pytest.raises(TooManyErrors, match="5 of 8 URLs failed"):
            crawl(ws, CrawlConfig(urls=str(lst), allow_private=True))
        assert ws.head() is None
        res = crawl(ws, CrawlConfig(urls=str(lst), allow_private=True, max_error_fraction=1.0))
        assert res["stats"]["mode"] == "resume" and res["stats"]["fetched_now"] == 0
        assert res["stats"]["summary"]["included"] == 3 and res["stats"]["summary"]["excluded"] == 5
        assert all(n == 1 for p, n in site.hits.items() if p != "/robots.txt")


def test_retry_failed_refetches_only_failures(tmp_path, png_bytes):
    fail = static(b"busy", "text/plain", status=503)
    routes = {
        "/a.png": static(png_bytes(1)),
        "/flaky.png": sequence(fail, fail, static(png_bytes(2))),
        "/gone.png": static(b"", "text/plain", status=404),
        "/text.png": static(b"hello", "text/plain"),
    }
    with Site(routes) as site:
        lst = tmp_path / "urls.txt"
        lst.write_text("".join(site.url(p) + "\n" for p in routes))
        ws = Workspace(tmp_path / "ws")
        cfg = CrawlConfig(urls=str(lst), allow_private=True, retries=1, backoff=0.01, max_error_fraction=1.0)
        first = crawl(ws, cfg)
        assert first["stats"]["by_status"] == {"downloaded": 1, "http_error": 2, "not_an_image": 1}
        assert site.hits["/flaky.png"] == 2
        again = crawl(ws, CrawlConfig(**{**cfg.__dict__, "retry_failed": True}))
        st = again["stats"]
        assert st["mode"] == "retry" and st["gen"] == 2 and st["urls"] == 2 and st["fetched_now"] == 2
        assert {p: site.hits[p] for p in routes} == {"/a.png": 1, "/flaky.png": 3, "/gone.png": 2, "/text.png": 1}
        rows = {r["source"].split(str(site.port), 1)[1]: r for r in ws.samples().to_pylist()}
    assert len(rows) == 4, "still one row per URL"
    assert rows["/flaky.png"]["status"] == "ok" and rows["/gone.png"]["reason"] == "http_error"
    assert rows["/text.png"]["reason"] == "not_an_image"
    assert st["replaced_failed_rows"] == 2
    assert ws.samples("1").num_rows == 4


def test_killed_between_commit_and_journal_mark_is_reconciled(tmp_path, png_bytes, monkeypatch):
    """The version is committed but the process dies before the journal says so: the next run sees the version (its
    stats name the crawl and generation), so ``--retry-failed`` builds on it instead of resuming a finished crawl."""
    from curate.crawl.journal import Journal

    routes = {"/a.png": static(png_bytes(1)), "/gone.png": static(b"", "text/plain", status=404)}
    with Site(routes) as site:
        lst = tmp_path / "urls.txt"
        lst.write_text("".join(site.url(p) + "\n" for p in routes))
        ws = Workspace(tmp_path / "ws")
        cfg = CrawlConfig(urls=str(lst), allow_private=True, max_error_fraction=1.0, workers=1)

        def crash(self: Journal, version: str) -> None:
            raise KeyboardInterrupt  # as if killed right after the commit

        with monkeypatch.context() as m:
            m.setattr(Journal, "mark_committed", crash)
            with pytest.raises(KeyboardInterrupt):
                crawl(ws, cfg)
        assert ws.head() == "000001-crawl"
        res = crawl(ws, CrawlConfig(**{**cfg.__dict__, "retry_failed": True}))
        assert res["stats"]["mode"] == "retry" and res["stats"]["urls"] == 1 and res["version"] == "000002-crawl"
        assert site.hits["/a.png"] == 1 and site.hits["/gone.png"] == 2
