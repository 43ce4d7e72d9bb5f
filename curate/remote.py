"""fsspec URLs (``s3://``, ``gs://``, ``hf://`` ...) where curate takes a path: telling them from local paths, opening
their filesystem, reading one object under a byte cap, and turning storage errors into one line.

Credentials and endpoints come only from the settings fsspec and the storage library read themselves (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``~/.aws``; for any protocol fsspec's config files and ``FSSPEC_<PROTOCOL>_<KEY>``
variables). curate passes no storage options of its own, so a URL alone is all a worker process needs to open the
same filesystem (fsspec keeps one instance per process and per set of options).

``file://`` URLs are local paths (read with every local check); ``http(s)://`` is never read through fsspec: URL
rows go through the crawler, with its address checks, robots.txt and limits. fsspec is imported only inside the
functions here, so ``curate --help`` stays instant.
"""

from __future__ import annotations

import errno
import posixpath
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from curate.errors import CurateError, UsageError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: Protocols read through fsspec: object stores. Others (ftp, sftp, github ...) are not opened from a manifest row.
PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "hf"})
CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws/credentials), and AWS_ENDPOINT_URL "
    "for an S3-compatible store; other protocols read their own settings or fsspec's config"
)
#: Error class names of storage libraries that mean "no or bad credentials" (matched by name: botocore is optional).
_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "InvalidAccessKeyId")


def scheme(text: str) -> str | None:
    """The lower-case protocol of ``text`` (``s3``) when it is a URL, else None."""
    m = _SCHEME.match(text)
    return m.group(1).lower() if m else None


def is_remote(text: str) -> bool:
    """Whether ``text`` is a URL read through fsspec (an object store of ``PROTOCOLS``)."""
    if "://" not in text:  # the cheap test first: this runs once per file of a local ingest
        return False
    return scheme(text) in PROTOCOLS


def local_path(text: str) -> str:
    """``file:///data/x`` -> ``/data/x``; anything else unchanged.

    Raises:
        UsageError: a ``file://`` URL naming another host.
    """
    if scheme(text) != "file":
        return text
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"{text}: file:// URLs name this machine's files (file:///path), not host {parts.netloc!r}")
    return unquote(parts.path)


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for ``url``; the instance is fsspec's cached one for this process.

    Raises:
        CurateError: the protocol needs a package that is not installed (``s3fs`` for s3://).
        UsageError: fsspec does not know the protocol.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        s3 = scheme(url) in ("s3", "s3a")
        hint = "install the [s3] extra: pip install 'curate[s3]'" if s3 else "install the fsspec package for that protocol"
        raise CurateError(f"{url}: reading {scheme(url)}:// needs a package that is not installed ({exc})", hint=hint) from None
    except ValueError as exc:
        raise UsageError(f"{url}: unknown protocol {scheme(url)}:// ({exc})") from None


def url_of(fs: Any, path: str) -> str:
    """The URL of ``path`` inside ``fs`` (``bucket/key`` -> ``s3://bucket/key``), without a trailing slash."""
    return fs.unstrip_protocol(path.rstrip("/"))


def describe(exc: BaseException) -> tuple[str, str]:
    """``(reason, text)`` for a storage error: ``missing`` for a bucket or key that is not there, else ``unreadable``."""
    msg = (str(exc).strip().splitlines() or [""])[0][:200]
    name = type(exc).__name__
    if name in _CREDENTIAL_ERRORS or "credentials" in msg.lower():
        return "unreadable", f"no usable credentials: {msg or name}"
    if isinstance(exc, FileNotFoundError):
        # s3fs says "The specified bucket does not exist", or just repeats the path for a missing key
        return "missing", msg if "bucket" in msg.lower() or "key" in msg.lower() else "no such object or prefix"
    if isinstance(exc, PermissionError):
        return "unreadable", f"access denied ({msg})" if msg else "access denied"
    return "unreadable", f"{name}: {msg}" if msg else name


def remote_error(url: str, exc: BaseException, doing: str = "read") -> CurateError:
    """A one-line ``CurateError`` naming ``url`` and why ``doing`` failed, with a hint fitting the cause."""
    reason, text = describe(exc)
    if text.startswith("no usable credentials"):
        hint = CREDENTIALS_HINT
    elif reason == "missing":
        hint = "check the bucket name and the key or prefix"
    else:
        hint = "check the credentials' permissions and AWS_ENDPOINT_URL / the store's address"
    return CurateError(f"{url}: cannot {doing} ({text})", hint=hint)


def read_capped(url: str, max_bytes: int) -> tuple[bytes | None, str | None, str | None]:
    """``(data, reason, error)`` of one object, read with at most ``max_bytes + 1`` bytes in memory.

    One ranged GET (no HEAD first): a key deleted since it was listed gives reason ``missing``. Runs in worker
    processes: the filesystem comes from the URL (fsspec's per-process instance), never from the driver.
    """
    try:
        fs, path = filesystem(url)
        try:
            data = fs.cat_file(path, start=0, end=max_bytes + 1)
        except OSError as exc:
            # A ranged GET of an empty object is "range not satisfiable": ask its size before calling it an error.
            if isinstance(exc, FileNotFoundError | PermissionError) or exc.errno != errno.EINVAL or fs.size(path) != 0:
                raise
            data = b""
    except CurateError as exc:
        return None, "unreadable", exc.message
    except Exception as exc:  # noqa: BLE001 - storage libraries raise their own types; each becomes the row's reason
        return None, *describe(exc)
    if len(data) > max_bytes:
        return None, "too_large", f"more than max_bytes {max_bytes}"
    return data, None, None


def join(base_url: str, rel: str) -> str | None:
    """``rel`` (a manifest's relative path) under the folder URL ``base_url``; None when it leaves the bucket."""
    head = base_url.split("://", 1)[0] + "://"
    base = base_url[len(head) :]
    bucket = base.split("/", 1)[0]
    joined = posixpath.normpath(posixpath.join(base, rel))
    if joined != bucket and not joined.startswith(bucket + "/"):
        return None
    return head + joined


def open_input(loc: Any, block_size: int = 8 << 20) -> Any:
    """A binary file object for a local path or an fsspec URL.

    A URL is read through fsspec's read-ahead cache of ``block_size`` bytes, in ranged requests: an archive or a
    manifest streams through memory instead of arriving whole.
    """
    if isinstance(loc, str) and is_remote(loc):
        fs, path = filesystem(loc)
        return fs.open(path, "rb", block_size=block_size)
    return open(loc, "rb")


def listing(url: str) -> list[tuple[str, int, str]]:
    """``(key relative to url, size, ETag or mtime)`` of every object at or under ``url``, for a pipeline's
    input fingerprint; empty when it cannot be listed (ingest itself then says why, in one line)."""
    try:
        fs, path = filesystem(url)
        found = fs.find(path, detail=True)
    except Exception:  # noqa: BLE001 - a missing bucket or credentials: reported by the ingest that follows
        return []
    root = path.rstrip("/") + "/"
    out = []
    for name, info in found.items():
        tag = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        out.append((name[len(root) :] if name.startswith(root) else posixpath.basename(name), int(info.get("size") or 0), str(tag)))
    return out
