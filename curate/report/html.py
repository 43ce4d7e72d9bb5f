"""Render report sections (``curate.report.collect``) as one self-contained HTML page.

Self-contained: inline CSS, images and plots as base64 ``data:`` URIs, no script, nothing fetched (even the favicon
is an empty ``data:`` URI, so a browser logs no failed request). Every text that comes from data (labels, paths,
URLs, error messages, class names) goes through ``html.escape``: labels come from users' folders and crawled pages
and are untrusted. Text in backticks becomes ``<code>`` after escaping, so it cannot smuggle markup in.
"""

from __future__ import annotations

import html
import re
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222;background:#fff}
header{background:#263238;color:#eceff1;padding:14px 24px}
header h1{font-size:1.35em;margin:0 0 4px}header .sub{color:#b0bec5;font-size:.9em}
nav{padding:8px 24px;background:#eceff1;position:sticky;top:0;z-index:1;border-bottom:1px solid #cfd8dc}
nav{display:flex;flex-wrap:wrap;gap:4px 14px}
nav a{color:#1a4f8b;text-decoration:none;white-space:nowrap}
main{padding:4px 24px 40px;max-width:1400px}
section{border-bottom:1px solid #e0e0e0;padding:6px 0 18px}
h2{font-size:1.2em;margin:18px 0 6px}h3{font-size:1em;margin:14px 0 6px;color:#37474f}
.intro{color:#455a64;margin:4px 0 10px}.omitted li{color:#607d8b}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border-bottom:1px solid #e0e0e0;padding:3px 10px;text-align:left;vertical-align:top}
td.long{overflow-wrap:anywhere;min-width:12em}
th{background:#f5f5f5;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:bottom;text-align:left;color:#78909c;font-size:12px;padding-top:3px}
table.kv th{background:none;color:#546e7a;font-weight:600}
img.plot{max-width:100%;height:auto;display:inline-block;vertical-align:top;margin:8px 8px 8px 0;border:1px solid #eee}
.gal{display:flex;flex-wrap:wrap;gap:8px;margin:4px 0 12px}
figure{margin:0;width:112px;font-size:11px;line-height:1.25;color:#37474f;word-break:break-word}
figure img,.noimg{image-rendering:pixelated;border:1px solid #cfd8dc;background:#fafafa;display:block;margin:0 auto 2px}
.noimg{width:96px;height:96px;color:#90a4ae;font-size:10px;display:flex;align-items:center;justify-content:center;text-align:center}
.grp{border-left:3px solid #90caf9;padding:2px 0 2px 10px;margin:8px 0}.grp .t{font-size:12px;color:#455a64;margin-bottom:4px}
.more{align-self:center;color:#78909c;font-size:12px}
tr.top td{background:#fff3cd;font-weight:600}
code{background:#f1f3f4;padding:0 3px;border-radius:3px;font-size:.92em}
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def prose(text: str) -> str:
    """Escaped text with `backticked` spans as <code> (applied after escaping: no markup can get through)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def _cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        # only long text (paths, URLs) may break anywhere: short words wrapping mid-word are unreadable
        return f'<td class="long">{esc(value)}</td>' if len(str(value)) > 32 else f"<td>{esc(value)}</td>"
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    return '<td class="n">-</td>' if value != value else f'<td class="n">{value:.4g}</td>'


def _table(block: dict[str, Any]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in block["head"])
    mark = set(block.get("mark") or ())  # rows to highlight (the top cause, the largest gap)
    body = "".join(
        ('<tr class="top">' if i in mark else "<tr>") + "".join(_cell(c) for c in row) + "</tr>" for i, row in enumerate(block["rows"])
    )
    caption = f"<caption>{esc(block['caption'])}</caption>" if block.get("caption") else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(it: dict[str, Any]) -> str:
    cap = "<br>".join(esc(c) for c in it.get("caption", []))
    alt = esc(it["caption"][0] if it.get("caption") else it["sample_id"][:12])
    if it.get("uri"):
        pic = f'<img src="{esc(it["uri"])}" width="{int(it["w"])}" height="{int(it["h"])}" alt="{alt}" loading="lazy">'
    else:
        pic = f'<div class="noimg">{esc(it.get("missing") or "no image")}</div>'
    return f'<figure title="{esc(it["sample_id"])}">{pic}<figcaption>{cap}</figcaption></figure>'


def _block(block: dict[str, Any]) -> str:
    kind = block["kind"]
    if kind == "text":
        return f'<p class="intro">{prose(block["text"])}</p>'
    if kind == "kv":
        rows = "".join(f"<tr><th>{esc(k)}</th>{_cell(str(v))}</tr>" for k, v in block["pairs"])
        return f'<table class="kv"><tbody>{rows}</tbody></table>'
    if kind == "table":
        return _table(block)
    if kind == "plot":
        return f'<img class="plot" src="{esc(block["uri"])}" alt="{esc(block.get("alt", ""))}">'
    if kind == "gallery":
        title = f"<h3>{esc(block['title'])}</h3>" if block.get("title") else ""
        return f'{title}<div class="gal">{"".join(_figure(it) for it in block["items"])}</div>'
    if kind == "groups":
        out = []
        for g in block["groups"]:
            more = f'<span class="more">+{g["more"]} more</span>' if g.get("more") else ""
            figs = "".join(_figure(it) for it in g["items"])
            out.append(f'<div class="grp"><div class="t">{esc(g["title"])}</div><div class="gal">{figs}{more}</div></div>')
        return "".join(out)
    raise ValueError(f"unknown report block kind {kind!r}")


def render(title: str, subtitle: str, sections: list[dict[str, Any]]) -> str:
    """The whole page: header, a link bar to the rendered sections, the sections, and what was left out and why."""
    shown = [s for s in sections if not s.get("omitted")]
    left_out = [s for s in sections if s.get("omitted")]
    nav = "".join(f'<a href="#{esc(s["id"])}">{esc(s["title"])}</a>' for s in shown)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f'<header><h1>{esc(title)}</h1><div class="sub">{prose(subtitle)}</div></header>',
        f"<nav>{nav}</nav><main>",
    ]
    for s in shown:
        parts.append(f'<section id="{esc(s["id"])}"><h2>{esc(s["title"])}</h2>')
        if s.get("intro"):
            parts.append(f'<p class="intro">{prose(s["intro"])}</p>')
        parts.extend(_block(b) for b in s["blocks"])
        parts.append("</section>")
    if left_out:
        items = "".join(f"<li><b>{esc(s['title'])}</b>: {prose(s['omitted'])}</li>" for s in left_out)
        parts.append(f'<section id="not-shown"><h2>Not in this report</h2><ul class="omitted">{items}</ul></section>')
    parts.append("</main></body></html>\n")
    return "\n".join(parts)
