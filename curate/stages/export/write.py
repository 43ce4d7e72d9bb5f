"""The work of ``curate export``: a version's included rows as Parquet / WebDataset shards, byte-for-byte reproducibly.

``<out>/`` (default ``<workspace>/exports/<version>/``) gets one folder per format, holding nothing but shards,
so the obvious glob of each reader reads exactly the shards (``parquet/*.parquet`` for pandas, DuckDB and
``load_dataset("parquet", data_dir=...)``; ``webdataset/{split}-*.tar`` for WebDataset)::

    dataset.json                       classes, counts, lineage, normalization, image mode/channels, decode hints
    index.json                         one entry per shard: file (relative), split, format, rows, bytes, sha256
    parquet/{split}-{NNNNNN}.parquet
    webdataset/{split}-{NNNNNN}.tar

A split gets at least ``min_shards`` shards when it has the rows (a loader needs a shard per worker). Rows are
ordered by ``sample_id`` inside a split: a content hash, so shards mix classes and the order does not depend on
storage. Tar members carry a fixed integer mtime, uid/gid 0 and no user names: re-exports are byte-identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import __version__
from curate.errors import CurateError
from curate.schema import RESERVED, class_list, included
from curate.stages.export import ExportConfig
from curate.stages.export.sink import open_sink, read_finished
from curate.workspace import Workspace

SUFFIX = {"parquet": "parquet", "webdataset": "tar"}  # the folder of a format is its name
INDEX = "index.json"
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F", "P;L"})
SPLIT_ORDER = ("train", "train_dev", "val", "test")
MTIME = 1_700_000_000  # fixed, integer: a float mtime would add a PAX header to every member
_INTERNAL = {"status", "excluded_by", "reason", "error", "pack", "extra_labels"}
_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff", "MPO": "jpg"}


def shard_name(fmt: str, split: str, k: int) -> str:
    """The path of shard ``k`` of ``split`` in an export folder: ``parquet/train-000003.parquet``."""
    return f"{fmt}/{split}-{k:06d}.{SUFFIX[fmt]}"


def image_info(modes: set[str | None], normalization: dict[str, Any] | None) -> dict[str, Any]:
    """What readers should decode images to: the normalization's channels (else 1 when every image is gray, else 3),
    the PIL mode and the WebDataset ``decode`` spec (``decode("pil")`` gives RGB; gray data wants ``"pill"``/``"l8"``)."""
    channels = int((normalization or {}).get("channels") or (1 if modes and modes <= GRAY_MODES else 3))
    gray = channels == 1
    return {"mode": "L" if gray else "RGB", "channels": channels, "webdataset_decode": "pill" if gray else "pilrgb",
            "webdataset_decode_numpy": "l8" if gray else "rgb8", "pil_convert": "L" if gray else "RGB"}  # fmt: skip


def _split_key(s: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s)


def _shards(sizes: list[int], shard_rows: int | None, shard_bytes: int | None, min_shards: int = 1) -> list[tuple[int, int]]:
    """Cut a sequence of item sizes into [start, stop) ranges respecting both limits (at least 1 item each), and
    into at least ``min(min_shards, len(sizes))`` ranges (rows spread evenly)."""
    even = -(-len(sizes) // max(min_shards, 1)) if sizes else None
    shard_rows = min(shard_rows, even) if shard_rows and even else (shard_rows or even)
    out, start, acc = [], 0, 0
    for i, size in enumerate(sizes):
        rows = i - start
        if rows and ((shard_rows and rows >= shard_rows) or (shard_bytes and acc + size > shard_bytes)):
            out.append((start, i))
            start, acc = i, 0
        acc += size
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out


def _expand_repeats(part: pa.Table, split: str) -> pa.Table:
    """Rows as written to shards, with ``_blob`` = the sample id of their bytes.

    A train row with ``repeat`` = r > 1 (``curate balance --strategy oversample``) is written r times: the first copy
    under its ``sample_id``, the others as ``<sample_id>_r1`` ... ``_r<r-1>`` (shard keys must be unique). Other splits
    are never repeated.
    """
    part = part.append_column("_blob", part.column("sample_id"))
    if split != "train" or "repeat" not in part.column_names:
        return part
    reps = [max(1, r or 1) for r in part.column("repeat").to_pylist()]
    if max(reps, default=1) == 1:
        return part
    idx = [i for i, r in enumerate(reps) for _ in range(r)]
    ids = part.column("sample_id").to_pylist()
    keys = [sid if k == 0 else f"{sid}_r{k}" for sid, r in zip(ids, reps, strict=True) for k in range(r)]
    out = part.take(pa.array(idx, pa.int64()))
    return out.set_column(out.schema.get_field_index("sample_id"), "sample_id", pa.array(keys, pa.string())).sort_by("sample_id")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hf_features(schema: pa.Schema, classes: list[str]) -> dict[str, Any]:
    """Hugging Face ``datasets`` feature metadata, so ``image`` loads as Image and ``label`` as ClassLabel."""
    simple = {pa.string(): "string", pa.int8(): "int8", pa.int32(): "int32", pa.int64(): "int64",
              pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool"}  # fmt: skip
    feats: dict[str, Any] = {}
    for f in schema:
        if f.name == "image":
            feats[f.name] = {"_type": "Image"}
        elif f.name == "label":
            feats[f.name] = {"names": classes, "_type": "ClassLabel"}
        elif f.type in simple:
            feats[f.name] = {"dtype": simple[f.type], "_type": "Value"}
        elif pa.types.is_list(f.type) and f.type.value_type in simple:
            feats[f.name] = {"feature": {"dtype": simple[f.type.value_type], "_type": "Value"}, "_type": "Sequence"}
        else:
            return {}
    return {"info": {"features": feats}}


def _meta_columns(table: pa.Table) -> list[str]:
    """Columns exported beside the image: reserved facts plus every column a stage added."""
    keep = [c for c in RESERVED if c not in _INTERNAL and c not in ("label",)]
    keep += [c for c in table.column_names if c not in RESERVED]
    return [c for c in keep if c in table.column_names]


def _write_parquet(
    path: Path, rows: pa.Table, blobs: list[bytes], labels: list[int], meta_cols: list[str], classes: list[str]
) -> None:
    image = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array([None] * len(blobs), pa.string())], names=["bytes", "path"]
    )
    arrays = [rows.column("sample_id"), image, pa.array(labels, pa.int64()), rows.column("label")]
    names = ["sample_id", "image", "label", "label_name"]
    for c in meta_cols:
        if c != "sample_id":
            arrays.append(rows.column(c))
            names.append(c)
    table = pa.Table.from_arrays(arrays, names=names)
    hf = _hf_features(table.schema, classes)
    if hf:
        table = table.replace_schema_metadata({"huggingface": json.dumps(hf)})
    pq.write_table(table, path, compression="snappy", row_group_size=1000)


def _write_tar(path: Path, rows: pa.Table, blobs: list[bytes], labels: list[int], meta_cols: list[str]) -> None:
    metas = rows.select(meta_cols).to_pylist()
    names = rows.column("label").to_pylist()
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for meta, data, lab, name in zip(metas, blobs, labels, names, strict=True):
            key = meta["sample_id"]
            ext = _EXT.get(meta.get("format") or "", "img")
            meta = {**meta, "label": lab, "label_name": name}
            members = {
                f"{key}.cls": str(lab).encode(),
                f"{key}.json": json.dumps(meta, sort_keys=True, default=str).encode(),
                f"{key}.{ext}": data,
            }
            for member in sorted(members):
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = len(members[member]), MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tf.addfile(info, io.BytesIO(members[member]))


def _lineage_state(ws: Workspace, vid: str, name: str) -> Any:
    for v in reversed(ws.lineage(vid)):
        p = ws.state_path(v, name)
        if p.exists():
            return json.loads(p.read_text())
    return None


def _card(ws: Workspace, vid: str, cfg: ExportConfig, inc: pa.Table, split_rows: dict[str, int], classes: list[str],
          meta_cols: list[str]) -> dict[str, Any]:  # fmt: skip
    """The ``dataset.json`` of an export: what a reader needs without curate (``inc`` has ``split`` filled)."""
    cls_index = {c: i for i, c in enumerate(classes)}
    counts: dict[str, dict[str, int]] = {}
    for split in split_rows:
        sub = _expand_repeats(inc.filter(pc.equal(inc.column("split"), split)), split)
        vc = {
            (r["values"] if r["values"] is not None else "(unlabeled)"): r["counts"]
            for r in pc.value_counts(sub.column("label")).to_pylist()
        }
        counts[split] = {k: vc[k] for k in sorted(vc, key=lambda c: (cls_index.get(c, len(classes)), c))}
    normalization = _lineage_state(ws, vid, "normalization.json")
    lineage = [{"id": i["id"], "stage": i["stage"], "config_sha256": i["config_sha256"]} for i in map(ws.info, ws.lineage(vid))]
    return {
        "format_version": 2,
        "created_by": f"curate {__version__}",
        "version": vid,
        "lineage": lineage,
        "classes": classes,
        "splits": split_rows,
        "counts": counts,
        "normalization": normalization,
        "image": image_info(set(inc.column("mode").to_pylist()) if "mode" in inc.column_names else set(), normalization),
        "formats": list(cfg.formats),
        "layout": {fmt: f"{fmt}/{{split}}-NNNNNN.{SUFFIX[fmt]}" for fmt in cfg.formats},
        "index": INDEX,
        "shard_rows": cfg.shard_rows,
        "shard_bytes": cfg.shard_bytes,
        "min_shards": cfg.min_shards,
        "columns": ["sample_id", "image", "label", "label_name", *[c for c in meta_cols if c != "sample_id"]],
        "webdataset": {"key": "sample_id", "image": "<format ext>", "cls": "class index (-1 unlabeled)", "json": "metadata"},
    }


def _write_shards(tmp: Path, split: str, part: pa.Table, ranges: list[tuple[int, int]], which: range, got: dict[str, bytes],
                  classes: list[str], meta_cols: list[str], formats: tuple[str, ...], vid: str) -> list[dict[str, Any]]:  # fmt: skip
    """Write shards ``which`` (indices into ``ranges``) of ``split`` in every format; ``got`` holds their bytes.

    Returns:
        Their ``index.json`` entries: ``file`` (relative to the export), ``split``, ``format``, ``rows``, ``bytes``, ``sha256``.
    """
    cls_index = {c: i for i, c in enumerate(classes)}
    entries = []
    for k in which:
        a, b = ranges[k]
        rows = part.slice(a, b - a)
        ids = rows.column("_blob").to_pylist()
        missing = [s for s in ids if s not in got]
        if missing:
            raise CurateError(
                f"blob {missing[0]} of version {vid} is missing from the packs", hint="the workspace is damaged; re-ingest the source"
            )
        blobs = [got[s] for s in ids]
        labels = [cls_index.get(x, -1) if x is not None else -1 for x in rows.column("label").to_pylist()]
        for fmt in formats:
            name = shard_name(fmt, split, k)
            if fmt == "parquet":
                _write_parquet(tmp / name, rows, blobs, labels, meta_cols, classes)
            else:
                _write_tar(tmp / name, rows, blobs, labels, meta_cols)
            entries.append({"file": name, "split": split, "format": fmt, "rows": rows.num_rows,
                            "bytes": (tmp / name).stat().st_size, "sha256": _sha256_file(tmp / name)})  # fmt: skip
    return entries


def export_version(ws: Workspace, vid: str, cfg: ExportConfig, *, advance: Any = None) -> dict[str, Any]:
    """Write the shards, ``index.json`` and ``dataset.json`` of version ``vid`` (layout: the module docstring).

    Returns:
        ``{"version", "out", "formats", "splits" (split -> rows), "shards", "bytes", "seconds"}``.

    ``cfg.out`` may be an fsspec URL (``s3://bucket/prefix``): the same files, uploaded with ``dataset.json`` last
    (what a reader can rely on there: ``curate.stages.export.sink``).

    Raises:
        CurateError: the version has no included rows, ``out`` is a non-empty folder (prefix) that is not an
            export, or the bucket cannot be written (missing, no credentials: one line naming the URL).
    """
    t0 = time.perf_counter()
    table = ws.samples(vid)
    inc = included(table)
    inc = inc.filter(pc.is_valid(inc.column("pack")))
    # Classes of the exported rows only: a label whose rows were all excluded (e.g. rejected by --classes)
    # must not become an output class that no sample has.
    classes = class_list(inc.column("label").to_pylist())
    if inc.num_rows == 0:
        raise CurateError(f"version {vid} has no included samples to export")
    sink = open_sink(cfg.out or ws.export_target(vid), ws.root)
    sink.check()
    tmp = sink.staging()
    splits = pc.fill_null(inc.column("split"), "all")
    inc = inc.set_column(inc.schema.get_field_index("split"), "split", splits)
    meta_cols = _meta_columns(inc)
    index_rows: list[dict[str, Any]] = []
    split_rows: dict[str, int] = {}
    try:
        for fmt in cfg.formats:
            (tmp / fmt).mkdir()
        for split in sorted(pc.unique(splits).to_pylist(), key=_split_key):
            part = _expand_repeats(inc.filter(pc.equal(splits, split)).sort_by("sample_id"), split)
            split_rows[split] = part.num_rows
            sizes = pc.fill_null(part.column("nbytes"), 0).to_pylist()
            ranges = _shards(sizes, cfg.shard_rows, cfg.shard_bytes, cfg.min_shards)
            i = 0
            while i < len(ranges):
                # Fetch bytes for as many shards as fit in the memory budget, reading each pack once.
                j, held = i, 0
                while j < len(ranges) and (j == i or held + sum(sizes[ranges[j][0] : ranges[j][1]]) <= cfg.memory_bytes):
                    held += sum(sizes[ranges[j][0] : ranges[j][1]])
                    j += 1
                lo, hi = ranges[i][0], ranges[j - 1][1]
                chunk = part.slice(lo, hi - lo)
                got = ws.blobs.get_many(chunk.column("_blob").to_pylist(), chunk.column("pack").to_pylist())
                done = _write_shards(tmp, split, part, ranges, range(i, j), got, classes, meta_cols, cfg.formats, vid)
                sink.shards_done(tmp, [r["file"] for r in done])
                index_rows += done
                if advance:
                    advance(hi - lo)
                i = j
        index_rows.sort(key=lambda r: (r["format"], _split_key(r["split"]), r["file"]))
        (tmp / INDEX).write_text(json.dumps(index_rows, indent=1) + "\n")
        card = _card(ws, vid, cfg, inc, split_rows, classes, meta_cols)
        (tmp / "dataset.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        sink.commit(tmp)
    except BaseException:
        sink.abort(tmp)
        raise
    secs = time.perf_counter() - t0
    total_bytes = sum(r["bytes"] for r in index_rows)
    return {
        "version": vid,
        "out": sink.where,
        "formats": list(cfg.formats),
        "splits": split_rows,
        "shards": len(index_rows),
        "bytes": total_bytes,
        "seconds": round(secs, 3),
        "mb_per_s": round(total_bytes / 1e6 / secs, 1) if secs > 0 else None,
    }


def finished_export(ws: Workspace, vid: str, cfg: ExportConfig) -> dict[str, Any] | None:
    """The result of an export of ``vid`` with these settings that is already complete on disk, else None."""
    sink = open_sink(cfg.out or ws.export_target(vid), ws.root)
    found = read_finished(sink)
    if found is None:
        return None
    card, index = found
    lineage = [{"id": i["id"], "stage": i["stage"], "config_sha256": i["config_sha256"]} for i in map(ws.info, ws.lineage(vid))]
    keys = ("version", "lineage", "formats", "shard_rows", "shard_bytes", "min_shards")
    if tuple(card.get(k) for k in keys) != (vid, lineage, list(cfg.formats), cfg.shard_rows, cfg.shard_bytes, cfg.min_shards):
        return None
    return {"version": vid, "out": sink.where, "formats": card["formats"], "splits": card["splits"], "shards": len(index),
            "bytes": sum(r["bytes"] for r in index), "seconds": 0.0, "mb_per_s": None, "cached": True}  # fmt: skip
