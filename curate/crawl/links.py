"""HTML pages -> links to follow and image URLs to fetch (stdlib ``html.parser``), and URL normalisation.

What counts as an image of a page: ``<img>`` (the largest ``srcset`` candidate, else ``src``, else the lazy-load
``data-src``), one per ``<picture>`` (the largest candidate of its first ``<source srcset>``, else its ``<img>``),
and ``<a href>`` / ``<area href>`` whose path ends in an image extension. Other ``<a href>`` / ``<area href>`` are
page links. One image per ``<img>`` or ``<picture>``: every candidate is the same picture at another size or in
another format, and a dataset wants it once at the largest size, not as near duplicates.

``<base href>`` changes how relative URLs resolve; ``<meta name="robots">`` with ``noai`` / ``noimageai`` marks the
page's images as not to be used, ``nofollow`` stops link following from the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".pjpeg", ".pjp", ".ico")
_DEFAULT_PORT = {"http": 80, "https": 443}
_SRCSET_DESC = re.compile(r"^(\d+(?:\.\d+)?)([wx])$")


def normalize_url(url: str, base: str | None = None) -> str | None:
    """Absolute, comparable form of ``url``: resolved against ``base``, fragment dropped, scheme and host
    lowercased, default port removed, empty path -> ``/``. None for non-http(s) or unparsable URLs."""
    url = url.strip()
    if not url:
        return None
    try:
        if base is not None:
            url = urljoin(base, url)
        url = urldefrag(url)[0]
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORT or not parts.hostname:
            return None
        host = parts.hostname.lower()
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = parts.port
    except ValueError:
        return None
    netloc = host if port in (None, _DEFAULT_PORT[scheme]) else f"{host}:{port}"
    if parts.username or parts.password:  # keep credentials the user wrote; never invented ones
        netloc = f"{parts.netloc.rsplit('@', 1)[0]}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def is_image_url(url: str) -> bool:
    """True when the URL's path ends in a known image extension (query strings ignored)."""
    return urlsplit(url).path.lower().endswith(IMAGE_EXTENSIONS)


def largest_srcset(srcset: str) -> str | None:
    """The candidate with the largest width (``640w``) or density (``2x``) descriptor; the first when none has one."""
    best: tuple[float, str] | None = None
    for cand in srcset.split(","):  # URLs with commas in them are rare enough to not parse the full grammar
        bits = cand.strip().split()
        if not bits:
            continue
        score = 1.0
        if len(bits) > 1:
            m = _SRCSET_DESC.match(bits[-1])
            if m:
                score = float(m.group(1)) * (1.0 if m.group(2) == "w" else 1e6)  # any w beats any x: w values are pixels
        if best is None or score > best[0]:
            best = (score, bits[0])
    return best[1] if best else None


@dataclass
class Page:
    """What a page offers: ``links`` (pages), ``images`` (image URLs), both absolute and normalised, in document
    order without repeats; ``noai`` and ``nofollow`` from ``<meta name="robots">``."""

    links: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    noai: bool = False
    nofollow: bool = False


class _Parser(HTMLParser):
    def __init__(self, base: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base = base
        self.raw_links: list[str] = []
        self.raw_images: list[str] = []
        self.noai = self.nofollow = False
        self.picture: list[str | None] = []  # open <picture> elements: the one image each will give

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v for k, v in attrs if v is not None}
        if tag == "base" and "href" in a:
            self.base = urljoin(self.base, a["href"])
        elif tag in ("a", "area") and "href" in a:
            (self.raw_images if is_image_url(a["href"]) else self.raw_links).append(a["href"])
        elif tag == "img":
            src = largest_srcset(a.get("srcset") or a.get("data-srcset") or "") or a.get("src") or a.get("data-src")
            if self.picture:
                self.picture[-1] = self.picture[-1] or src  # the <img> of a <picture> is its fallback
            elif src:
                self.raw_images.append(src)
        elif tag == "picture":
            self.picture.append(None)
        elif tag == "source" and self.picture and a.get("srcset") and self.picture[-1] is None:
            self.picture[-1] = largest_srcset(a["srcset"])  # the first <source> is the author's preferred form
        elif tag == "meta" and a.get("name", "").lower() == "robots":
            words = {w.strip().lower() for w in a.get("content", "").split(",")}
            self.noai |= bool(words & {"noai", "noimageai"})
            self.nofollow |= bool(words & {"nofollow", "none"})

    def handle_endtag(self, tag: str) -> None:
        if tag == "picture" and self.picture:
            src = self.picture.pop()
            if src:
                self.raw_images.append(src)


def parse_page(html: str, url: str) -> Page:
    """Parse ``html`` fetched from ``url``. Broken markup never raises: what could be read is returned."""
    parser = _Parser(url)
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: BLE001 - hostile markup: keep what was parsed so far
        pass
    page = Page(noai=parser.noai, nofollow=parser.nofollow)
    for raw, out in ((parser.raw_links, page.links), (parser.raw_images, page.images)):
        seen: set[str] = set()
        for ref in raw:
            norm = normalize_url(ref, parser.base)
            if norm is not None and norm not in seen:
                seen.add(norm)
                out.append(norm)
    return page


def decode_html(body: bytes, content_type: str | None) -> str:
    """Text of an HTML body: the charset of the Content-Type or a ``<meta charset>``, else UTF-8 (errors replaced)."""
    charset = None
    if content_type:
        m = re.search(r"charset=[\"']?([\w.:-]+)", content_type, re.I)
        charset = m.group(1) if m else None
    if charset is None:
        m = re.search(rb"<meta[^>]+charset=[\"']?([\w.:-]+)", body[:4096], re.I)
        charset = m.group(1).decode("ascii", "replace") if m else None
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
