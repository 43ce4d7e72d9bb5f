"""Batch tagging for executors that run work elsewhere: the same batches in, the same tables out, in order.

The remote side (``run_inline``, ``run_slices``; plain pyarrow, imported by the workers) calls the stage function
once per original batch and tags every output row with that batch's number; an exception becomes a one-row
table carrying the pickled exception instead of a failed task. The driver side (``regroup``) cuts the blocks
that come back at the tags, so it yields exactly one table per input batch, the same table the local executor
yields: same rows, same chunking (which matters: Parquet bytes written from a table depend on its chunks), and
the original exception, re-raised where the local executor would have raised it.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

TAG = "__curate_batch"
ERROR = "__curate_error"
TRACE = "__curate_trace"

Fn = Callable[[pa.Table, Any], pa.Table]


def _tagged(out: pa.Table, tag: int) -> pa.Table:
    return out.append_column(TAG, pa.array(np.full(out.num_rows, tag, np.int64)))


def _failure(exc: Exception, tag: int) -> pa.Table:
    """A one-row table carrying ``exc`` (pickled, or its text when it does not pickle) and the worker traceback."""
    try:
        payload = pickle.dumps(exc)
        pickle.loads(payload)
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling still reaches the driver as text
        payload = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return pa.table({TAG: pa.array([tag], pa.int64()), ERROR: pa.array([payload], pa.binary()), TRACE: [traceback.format_exc()]})


def _concat(outs: list[pa.Table]) -> pa.Table:
    return outs[0] if len(outs) == 1 else pa.concat_tables(outs)


def run_inline(block: pa.Table, fn: Fn, cfg: Any) -> pa.Table:
    """Remote side for in-memory batches: ``block`` holds whole tagged batches; call ``fn`` once per batch."""
    tags = block.column(TAG).to_numpy()
    body = block.drop_columns([TAG])
    outs: list[pa.Table] = []
    for start, stop in runs(tags):
        try:
            outs.append(_tagged(fn(body.slice(start, stop - start), cfg), int(tags[start])))
        except Exception as exc:  # noqa: BLE001 - carried to the driver, which re-raises it as it is
            return _failure(exc, int(tags[start]))
    return _concat(outs)


def run_slices(block: pa.Table, fn: Fn, cfg: Any) -> pa.Table:
    """Remote side for blob-pack batches: each row of ``block`` describes a batch (``PackBatches.slices`` plus a
    tag); read it from the pack here, on the worker, and call ``fn`` on it."""
    outs: list[pa.Table] = []
    for i in range(block.num_rows):
        tag = block.column(TAG)[i].as_py()
        try:
            outs.append(_tagged(fn(read_described(block, i), cfg), tag))
        except Exception as exc:  # noqa: BLE001 - carried to the driver, which re-raises it as it is
            return _failure(exc, tag)
    return _concat(outs)


def read_described(block: pa.Table, i: int) -> pa.Table:
    """The batch row ``i`` of ``block`` (``PackBatches.slices`` columns, maybe a tag) describes, read from its pack
    here, with its carried columns."""
    from curate.blobs import read_slice

    col = block.column
    batch = read_slice(col("path")[i].as_py(), col("start")[i].as_py(), col("rows")[i].as_py(), col("keep")[i].values)
    for name in block.column_names:
        if name not in ("path", "start", "rows", "keep", TAG):
            batch = batch.append_column(name, col(name)[i].values)
    return batch


def runs(tags: np.ndarray) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each run of equal consecutive values in ``tags``."""
    if len(tags) == 0:
        return
    cuts = np.flatnonzero(np.diff(tags)) + 1
    bounds = [0, *cuts.tolist(), len(tags)]
    yield from zip(bounds[:-1], bounds[1:], strict=True)


class ActorShell:
    """What a Ray actor holds: ``cls(cfg)``, built once; ``call`` returns its result or a failure table.

    A constructor that fails (a model that does not load) is kept and reported by every call, so its exception
    reaches the driver as it is rather than as Ray's "actor died".
    """

    def __init__(self, cls: Callable[[Any], Callable[[pa.Table], pa.Table]], cfg: Any) -> None:
        self.instance: Callable[[pa.Table], pa.Table] | None = None
        self.failed: pa.Table | None = None
        try:
            self.instance = cls(cfg)
        except Exception as exc:  # noqa: BLE001 - carried to the driver with the first batch
            self.failed = _failure(exc, 0)

    def call(self, batch: pa.Table) -> pa.Table:
        if self.instance is None:
            return self.failed
        try:
            return self.instance(batch)
        except Exception as exc:  # noqa: BLE001 - carried to the driver, which re-raises it as it is
            return _failure(exc, 0)

    def call_slice(self, described: pa.Table) -> pa.Table:
        """``call`` on the batch the one row of ``described`` (``PackBatches.slices``) names, read here from its pack."""
        try:
            batch = read_described(described, 0)
        except Exception as exc:  # noqa: BLE001 - carried to the driver, which re-raises it as it is
            return _failure(exc, 0)
        return self.call(batch)


def is_failure(table: pa.Table) -> bool:
    """Whether ``table`` is a worker's carried exception rather than a result."""
    return ERROR in table.column_names


def raise_failure(block: pa.Table) -> None:
    """Re-raise the exception a worker carried in ``block`` (a ``_failure`` table), with its traceback as a note."""
    exc = pickle.loads(block.column(ERROR)[0].as_py())
    exc.add_note("raised on a Ray worker:\n" + block.column(TRACE)[0].as_py())
    raise exc


def regroup(blocks: Iterable[pa.Table], n: int, done: dict[int, pa.Table] | None = None, *, first: int = 0) -> Iterator[pa.Table]:
    """One table per input batch ``first..first+n-1``, in order, from tagged ``blocks`` in tag order.

    Args:
        blocks: what the remote side returned; one batch's rows may span blocks, a block may hold many batches.
        n: the number of input batches.
        done: outputs computed elsewhere (empty input batches run in the driver), by batch number.
        first: the number of the first batch.

    A batch whose output had no rows leaves no tag; it comes back as an empty table of the output schema (or not
    at all while no output schema is known yet: nothing in curate returns an empty table for a non-empty batch).
    """
    done = dict(done or {})
    schema: pa.Schema | None = None
    pending: list[pa.Table] = []
    current = first - 1

    def flush(upto: int) -> Iterator[pa.Table]:
        nonlocal current, pending
        if pending:
            yield _concat(pending).combine_chunks()
            pending = []
        for k in range(current + 1, upto):
            if k in done:
                yield done.pop(k)
            elif schema is not None:
                yield schema.empty_table()
        current = upto

    for block in blocks:
        if is_failure(block):
            # The batch before it is complete (a batch never spans tasks); batches that shared the failing task
            # lost their results with it, so nothing is invented for them: the exception follows at once.
            if pending:
                yield _concat(pending).combine_chunks()
            raise_failure(block)
        if block.num_rows == 0:
            continue
        tags = block.column(TAG).to_numpy()
        body = block.drop_columns([TAG])
        schema = schema or body.schema
        for start, stop in runs(tags):
            tag = int(tags[start])
            if tag != current:
                yield from flush(tag)
                current = tag
            pending.append(body.slice(start, stop - start))
    yield from flush(first + n)
