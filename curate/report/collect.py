"""Facts about a version for the report: overview, lineage, class distribution, excluded samples, duplicates.

Every builder takes a ``Context`` and returns a *section*: ``{"id", "title", "intro", "blocks"}``, or the same
with ``"omitted": why`` (and a hint what to run) when the workspace has nothing for it. Blocks are plain dicts that
``curate.report.html`` renders (and escapes):

| kind | keys |
| --- | --- |
| text | ``text`` |
| kv | ``pairs``: list of (name, value) |
| table | ``head``: column names, ``rows``: lists of cells (numbers right-aligned), optional ``caption``, ``mark`` (rows highlighted) |
| plot | ``uri`` (PNG data URI), ``alt`` |
| gallery | ``items`` (``curate.report.gallery`` items), optional ``title`` |
| groups | ``groups``: list of ``{"title", "items", "more"}`` shown one row per group |

Builders read only small columns of the sample table (``Context.table``) and the versions' ``stats.json``; the
thumbnails are made afterwards for all sections at once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.report.gallery import GROUP_MEMBERS, item, rows_of, sample_table, seeded_key, short_source
from curate.schema import OK

if TYPE_CHECKING:
    from curate.workspace import Workspace

Section = dict[str, Any]
#: Rows of a class table before it is cut (the plot shows fewer; see ``plots.MAX_BARS``).
MAX_TABLE_ROWS = 200


@dataclass
class Context:
    """What every section builder needs.

    Attributes:
        ws: the ``curate.workspace.Workspace``.
        vid: the version the report is about.
        table: its sample table, restricted to the columns the report reads.
        lineage: ``vid`` and its ancestors, oldest first.
        max_gallery: most thumbnails per gallery.
        seed: the seed of every sampled gallery.
    """

    ws: Workspace
    vid: str
    table: pa.Table
    lineage: list[str]
    max_gallery: int
    seed: int

    def col(self, name: str) -> bool:
        return name in self.table.column_names

    def latest(self, stage: str) -> str | None:
        """The newest version of ``stage`` in the lineage (the one whose results the table carries)."""
        hits = [v for v in self.lineage if self.ws.info(v).get("stage") == stage]
        return hits[-1] if hits else None


def section(sid: str, title: str, intro: str = "", blocks: list[dict[str, Any]] | None = None) -> Section:
    return {"id": sid, "title": title, "intro": intro, "blocks": blocks or []}


def omitted(sid: str, title: str, why: str) -> Section:
    return {"id": sid, "title": title, "intro": "", "blocks": [], "omitted": why}


def overview(ctx: Context) -> Section:
    """The version, its workspace and its headline counts."""
    from curate.summary import summarize

    info = ctx.ws.info(ctx.vid)
    s = summarize(ctx.table)
    classes = [c for c in s["per_class"] if c != "(unlabeled)"]
    pairs = [
        ("workspace", ctx.ws.location),
        ("version", f"{ctx.vid} (stage {info.get('stage')}, parent {info.get('parent') or 'none'})"),
        ("rows", f"{s['rows']:,} ({s['included']:,} included, {s['excluded']:,} excluded)"),
        ("classes", f"{len(classes):,}: {', '.join(classes[:30])}{' ...' if len(classes) > 30 else ''}"),
        ("splits", ", ".join(f"{k} {v:,}" for k, v in s["per_split"].items()) or "none yet"),
        ("unlabeled included rows", f"{s['per_class'].get('(unlabeled)', 0):,}"),
    ]
    return section("overview", "Overview", "", [{"kind": "kv", "pairs": pairs}])


def _details(stage: str, st: dict[str, Any]) -> str:
    """One line of what a stage found, from its stats.json (empty when the stats hold nothing known)."""
    summ = st.get("summary") or {}
    if stage == "ingest":
        return f"{st.get('inputs', '?')} inputs from {st.get('source', '?')}"
    if stage == "dedupe":
        return (
            f"{st.get('groups', 0)} groups, {st.get('duplicates', 0)} duplicates ({st.get('exact_duplicates', 0)} exact, "
            f"{st.get('near_duplicates', 0)} near), {st.get('label_conflict_groups', 0)} with conflicting labels"
        )
    if stage == "split":
        return ", ".join(f"{k} {v}" for k, v in (summ.get("per_split") or {}).items())
    if stage == "normalize":
        n = st.get("normalization") or {}
        return f"mean {_fmt_list(n.get('mean'))}, std {_fmt_list(n.get('std'))} over {n.get('images', '?')} train images"
    if stage == "balance":
        return f"strategy {st.get('strategy') or 'report only'}, target {st.get('target')} ({st.get('target_count')})"
    if stage == "clean":
        parts = [f"{k.replace('_', ' ')} {st[k].get('flagged', 0)}" for k in ("label_issues", "outliers", "low_quality") if k in st]
        return ", ".join(parts)
    if stage == "augment":
        return f"{st.get('new_samples', 0)} new samples, policy {st.get('policy')}"
    if stage == "pseudolabel":
        rounds, chosen = st.get("rounds"), st.get("chosen_round")
        committed = f", round {chosen} committed ({st.get('accepted', 0):,} pseudo-labels)" if isinstance(chosen, int) else ""
        return f"{len(rounds)} rounds{committed}" if isinstance(rounds, list) else ""
    return ""


def _fmt_list(values: Any) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]" if isinstance(values, list) else "?"


def lineage(ctx: Context) -> Section:
    """Every version from the first to this one: rows, included in -> out, newly excluded by reason."""
    from curate.report import plots

    rows, names, inc, exc = [], [], [], []
    prev_inc, prev_rows, prev_reasons = 0, 0, {}
    for vid in ctx.lineage:
        info, st = ctx.ws.info(vid), ctx.ws.stats(vid)
        reasons = (st.get("summary") or {}).get("excluded_by_reason") or {}
        new = {k: v - prev_reasons.get(k, 0) for k, v in reasons.items() if v > prev_reasons.get(k, 0)}
        n_rows, n_inc = int(info.get("rows", 0)), int(info.get("included", 0))
        try:
            details = _details(str(info.get("stage")), st)
        except (AttributeError, TypeError, ValueError):  # stats of an older or foreign stage: no details
            details = ""
        rows.append(
            [
                vid,
                info.get("stage"),
                n_rows,
                n_rows - prev_rows,
                f"{prev_inc:,} -> {n_inc:,}",
                ", ".join(f"{k} {v}" for k, v in sorted(new.items())) or "-",
                details,
            ]
        )
        names.append(vid)
        inc.append(n_inc)
        exc.append(n_rows - n_inc)
        prev_inc, prev_rows, prev_reasons = n_inc, n_rows, reasons
    head = ["version", "stage", "rows", "rows added", "included in -> out", "newly excluded (stage:reason)", "what it found"]
    blocks = [
        {"kind": "table", "head": head, "rows": rows},
        {"kind": "plot", "uri": plots.lineage(names, inc, exc), "alt": "rows per version"},
    ]
    return section("lineage", "Lineage", f"{len(ctx.lineage)} versions, oldest first; {ctx.vid} is the last.", blocks)


def _class_table(per_split: dict[str, dict[str, int]], order: list[str]) -> tuple[list[str], list[list[Any]]]:
    classes = sorted({c for counts in per_split.values() for c in counts})
    rows = [[c, *[per_split[s].get(c, 0) for s in order]] for c in classes]
    return classes, rows


def classes(ctx: Context) -> Section:
    """Included samples per class and split; before and after balancing when a balance stage ran."""
    from curate.report import plots
    from curate.summary import summarize

    bal = ctx.latest("balance")
    if bal is not None and ctx.ws.stats(bal).get("before"):
        st = ctx.ws.stats(bal)
        before = {s: v.get("counts", {}) for s, v in st["before"].items()}
        after = {s: v.get("counts", {}) for s, v in (st.get("after") or {}).items()}
        cols: dict[str, dict[str, int]] = {}
        for s in dict.fromkeys([*before, *after]):
            cols[f"{s} before"] = before.get(s, {})
            cols[f"{s} after"] = after.get(s, {})
        order = list(cols)
        names, rows = _class_table(cols, order)
        intro = (
            f"Included, labeled samples per class and split before and after {bal} (strategy "
            f"{st.get('strategy') or 'report only'}; counts include oversampling repeats)."
        )
        focus = "train" if "train" in before else next(iter(before), None)
        series = {k: [cols[k].get(c, 0) for c in names] for k in (f"{focus} before", f"{focus} after")} if focus else {}
        title = f"{focus}: before and after balancing"
    else:
        per = summarize(ctx.table)["per_split_class"]
        order = sorted(per, key=lambda s: ({"train": 0, "train_dev": 1, "val": 2, "test": 3}.get(s, 4), s))
        names, rows = _class_table(per, order)
        intro = "Included samples per class and split (no balance stage in the lineage: `curate balance` evens out train)."
        series = {s: [per[s].get(c, 0) for c in names] for s in order}
        title = "samples per class and split"
    if not rows:
        return omitted("classes", "Class distribution", "no included samples")
    cut = len(rows) > MAX_TABLE_ROWS
    blocks: list[dict[str, Any]] = [
        {
            "kind": "table",
            "head": ["class", *order],
            "rows": rows[:MAX_TABLE_ROWS],
            "caption": f"first {MAX_TABLE_ROWS} of {len(rows)} classes" if cut else "",
        }
    ]
    if series:
        blocks.append({"kind": "plot", "uri": plots.class_bars(names, series, title), "alt": title})
    return section("classes", "Class distribution", intro, blocks)


def excluded(ctx: Context) -> Section:
    """Excluded rows by stage and reason, with a sampled gallery per reason.

    Only ``sample_id`` of the excluded rows is read into Python (for the seeded order); the other columns only for
    the rows shown, so a version with millions of excluded rows costs seconds, not gigabytes.
    """
    t = ctx.table
    excl = t.filter(pc.not_equal(t.column("status"), OK))
    if excl.num_rows == 0:
        return omitted("excluded", "Excluded samples", "nothing is excluded in this version")
    stage, reason = pc.fill_null(excl.column("excluded_by"), "?"), pc.fill_null(excl.column("reason"), "?")
    keyed = pa.table({"stage": stage, "reason": reason, "sample_id": excl.column("sample_id")})
    counts = keyed.group_by(["stage", "reason"]).aggregate([("sample_id", "count")]).to_pylist()
    counts.sort(key=lambda r: (-r["sample_id_count"], r["stage"], r["reason"]))
    table = [[r["stage"], r["reason"], r["sample_id_count"], f"{r['sample_id_count'] / t.num_rows:.1%}"] for r in counts]
    blocks: list[dict[str, Any]] = [{"kind": "table", "head": ["stage", "reason", "rows", "of all rows"], "rows": table}]
    cols = ("sample_id", "pack", "label", "source", "error")
    for r in counts:
        members = excl.filter(pc.and_(pc.equal(stage, r["stage"]), pc.equal(reason, r["reason"])))
        shown = rows_of(sample_table(members, ctx.max_gallery, ctx.seed), cols)
        items = [item(x, x["label"], short_source(x["source"]), (x["error"] or "")[:60]) for x in shown]
        note = f" (a sample of {len(shown)})" if len(shown) < members.num_rows else ""
        blocks.append({"kind": "gallery", "title": f"{r['stage']}: {r['reason']}: {members.num_rows:,} rows{note}", "items": items})
    intro = f"{excl.num_rows:,} of {t.num_rows:,} rows are excluded. Nothing is deleted: `curate checkout` an older version to undo."
    return section("excluded", "Excluded samples", intro, blocks)


def duplicates(ctx: Context) -> Section:
    """Duplicate groups side by side: the kept representative first, then its copies with kind and score.

    Groups are chosen from the ``dup_group`` column alone (conflicting labels first, then the seeded order) until
    ``max_gallery`` thumbnails are placed; only the chosen groups' rows are read into Python.
    """
    sid, title = "duplicates", "Duplicate groups"
    if not ctx.col("dup_group"):
        return omitted(sid, title, "no dedupe stage in the lineage (`curate dedupe`)")
    t = ctx.table
    dup = t.filter(pc.is_valid(t.column("dup_group")))
    if dup.num_rows == 0:
        return omitted(sid, title, "dedupe found no duplicates")
    gids = dup.column("dup_group").to_pylist()
    sizes = Counter(gids)
    conflict = set()
    if "dup_label_conflict" in dup.column_names:
        conflict = {g for g, c in zip(gids, dup.column("dup_label_conflict").to_pylist(), strict=True) if c}
    # conflicting labels first: those groups are label noise as well as redundancy
    chosen, shown = [], 0
    for g in sorted(sizes, key=lambda g: (g not in conflict, seeded_key(ctx.seed, g))):
        if shown >= ctx.max_gallery:
            break
        chosen.append(g)
        shown += min(sizes[g], GROUP_MEMBERS)
    cols = ("sample_id", "pack", "label", "source", "status", "dup_group", "dup_kind", "dup_score")
    members: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows_of(dup.filter(pc.is_in(dup.column("dup_group"), pa.array(chosen, pa.string()))), cols):
        members[r["dup_group"]].append(r)
    groups = []
    for g in chosen:
        rows = sorted(members[g], key=lambda r: (r["sample_id"] != g, -(r["dup_score"] or 0.0), r["sample_id"]))
        items = []
        for r in rows[:GROUP_MEMBERS]:
            role = "kept" if r["sample_id"] == g else f"{r['dup_kind'] or 'dup'} {r['dup_score'] or 0:.3f}"
            items.append(item(r, role, r["label"], short_source(r["source"]), "excluded" if r["status"] != OK else ""))
        labels = sorted({str(r["label"]) for r in rows})
        note = " - labels disagree" if len(labels) > 1 else ""
        groups.append(
            {
                "title": f"{len(rows)} images, labels {' / '.join(labels)}{note}",
                "items": items,
                "more": max(0, len(rows) - GROUP_MEMBERS),
            }
        )
    st = ctx.ws.stats(ctx.latest("dedupe")) if ctx.latest("dedupe") else {}
    intro = (
        f"{len(sizes):,} groups hold {dup.num_rows - len(sizes):,} duplicates ({st.get('exact_duplicates', '?')} exact, "
        f"{st.get('near_duplicates', '?')} near); {len(groups)} groups shown, conflicting labels first. "
        "The first image of each row is the one kept."
    )
    return section(sid, title, intro, [{"kind": "groups", "groups": groups}])
