"""The embedded hash-code index: files under ``var/``, two-stage search (thesis 4.2.3).

Search = coarse stage on the 64 coarse bits → a shortlist → re-ranking by the 256-bit
Hamming distance. The method is chosen by size (docs/similarity-search.md has the
measurements): below :data:`MIH_MIN_CODES` codes FAISS's exhaustive ``IndexBinaryFlat``
on all 256 bits (exact, and faster than any coarse stage there: ~2 ms at 1 M codes);
above it multi-index hashing over the four 16-bit subcodes (:mod:`retrieval.search.mih`),
which at 10 M codes reads ~0.4 M coarse candidates instead of 10 M codes, re-ranks a
shortlist, and measured 3.3× faster than ``IndexBinaryFlat`` at recall@100 0.97
(``manage.py bench similarity``).

Layout, so adding and removing stay incremental while the tables stay static arrays:

* a *sealed segment* — ids, codes and (when large) the MIH tables, built at once and
  written once (``seg-<name>/*.npy``, memory-mapped when loaded, so opening a 10 M index
  in the web process costs no parsing and its pages are shared with the OS cache);
* *tombstones* for removed or replaced sealed codes, and a small *tail* of codes added
  since, scanned exhaustively (``delta-<name>.npz``, rewritten by every ``persist``);
* ``manifest.json`` naming the current segment and delta, replaced atomically last.

When the tail or the tombstones grow past a fraction of the segment, the live codes are
*compacted* into a new segment. Every file is written to a temporary name and moved into
place with ``os.replace``, so a reader sees the old or the new index, never half of one.
Readers in other processes notice a new manifest (its ``stat``, checked on each search)
and reload. Within a process, writers hold a lock and publish an immutable
:class:`_State`, so concurrent searches never see a half-applied change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import CODE_BYTES, SUBCODES, CodeLengthMismatch, check_codes
from .mih import (
    MihTables,
    coarse64,
    coarse_search,
    guaranteed_radius,
    hamming64,
    hamming256,
    threshold_for,
)

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
#: Below this many sealed codes the coarse stage scans all 64-bit codes (measured
#: crossover with MIH: docs/similarity-search.md).
MIH_MIN_CODES = 2_000_000
#: Coarse candidates re-ranked on 256 bits (counted with repeats across subcodes).
SHORTLIST = 4000
#: Hard queries re-rank this many times the shortlist (see :func:`_search`).
WIDE_FACTOR = 4
#: Largest ring probed per subcode: every code within 4·3 + 3 = 15 bits (of 64) is found.
MAX_RADIUS = 3
#: Threads one large MIH scan is split over. Measured on the 2-core target machine at
#: 10 M codes: 4.4–5.2 ms on one thread, 5.9–6.0 ms split over two (numpy's
#: short steps between GIL releases serialise the threads, and the scan is bound by
#: memory latency); more threads may pay on machines with more memory channels.
THREADS = 1
#: The tail is compacted into the segment beyond max(TAIL_MIN, sealed / TAIL_FRACTION).
TAIL_MIN = 65_536
TAIL_FRACTION = 32
#: … and the segment is rewritten when more than this share of it is tombstones.
DEAD_FRACTION = 0.25
#: Writers hold an exclusive ``flock`` on this file (see :meth:`FaissCodeIndex.writing`).
WRITE_LOCK = ".write.lock"
#: ``_clean`` never deletes segments or deltas younger than this: another writer may have
#: just moved them into place without having written its manifest yet.
CLEAN_GRACE_S = 600

_EMPTY_IDS = np.zeros(0, dtype=np.int64)
_EMPTY_CODES = np.zeros((0, CODE_BYTES), dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class _State:
    """One consistent version of the index; replaced as a whole by every write."""

    ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)  # sealed: position → id
    codes: np.ndarray = field(default_factory=lambda: _EMPTY_CODES)  # sealed (n, 32)
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    n_dead: int = 0
    tables: MihTables | None = None  # MIH over the sealed codes (large segments)
    packed: np.ndarray | None = None  # sealed coarse codes (exhaustive mode, 64-bit variant)
    flat: Any = None  # faiss.IndexBinaryFlat over the sealed codes (exhaustive mode)
    cache: dict = field(default_factory=dict)  # per-state derived objects (tombstone filter)
    lookup_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)  # sealed ids sorted …
    lookup_pos: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)  # … their positions
    tail_ids: np.ndarray = field(default_factory=lambda: _EMPTY_IDS)  # added since sealing
    tail_codes: np.ndarray = field(default_factory=lambda: _EMPTY_CODES)
    segment: str = ""  # folder name of the sealed segment once written

    @property
    def sealed(self) -> int:
        return len(self.ids)

    @property
    def count(self) -> int:
        return self.sealed - self.n_dead + len(self.tail_ids)

    @property
    def method(self) -> str:
        return "mih" if self.tables is not None else "exhaustive"

    @property
    def nbytes(self) -> int:
        arrays = [self.ids, self.codes, self.dead, self.lookup_ids, self.lookup_pos]
        arrays += [self.tail_ids, self.tail_codes]
        if self.packed is not None:
            arrays.append(self.packed)
        total = sum(int(a.nbytes) for a in arrays)
        if self.flat is not None:
            total += int(self.flat.ntotal * self.flat.code_size)
        return total + (self.tables.nbytes if self.tables is not None else 0)

    def sealed_positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of the live sealed codes among ``ids`` (sorted ids, no repeats)."""
        if self.sealed == 0 or len(ids) == 0:
            return _EMPTY_IDS
        at = np.searchsorted(self.lookup_ids, ids)
        inside = at < self.sealed
        at = at[inside]
        pos = self.lookup_pos[at[self.lookup_ids[at] == ids[inside]]]
        return pos[~self.dead[pos]]


def seal(ids: np.ndarray, codes: np.ndarray, *, mih_min: int = MIH_MIN_CODES) -> _State:
    """A state whose segment holds exactly these (unique) ids and codes."""
    order = np.argsort(ids, kind="stable")
    tables = MihTables.build(codes) if len(ids) >= mih_min else None
    exhaustive = tables is None
    return _State(
        ids=ids,
        codes=codes,
        dead=np.zeros(len(ids), dtype=bool),
        tables=tables,
        packed=coarse64(codes) if exhaustive else None,
        flat=_flat_index(codes) if exhaustive else None,
        lookup_ids=ids[order],
        lookup_pos=order.astype(np.int64),
    )


def _flat_index(codes: np.ndarray):
    """FAISS's exhaustive 256-bit index over ``codes`` (exact; the fastest search below
    :data:`MIH_MIN_CODES`, measured: docs/similarity-search.md)."""
    import faiss

    flat = faiss.IndexBinaryFlat(CODE_BYTES * 8)
    if len(codes):
        flat.add(np.ascontiguousarray(codes))
    return flat


def _live_filter(s: _State):
    """FAISS search parameters that skip tombstoned positions (built once per state)."""
    if "params" not in s.cache:
        import faiss

        bitmap = np.packbits(s.dead, bitorder="little")
        selector = faiss.IDSelectorNot(faiss.IDSelectorBitmap(s.sealed, faiss.swig_ptr(bitmap)))
        params = faiss.SearchParameters(sel=selector)
        s.cache["params"] = (params, selector, bitmap)  # the selector reads the bitmap
    return s.cache["params"][0]


def _last_wins(ids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per id, the last given (adding an id twice replaces its code)."""
    reverse_first = np.unique(ids[::-1], return_index=True)[1]
    keep = len(ids) - 1 - reverse_first
    return ids[keep], codes[keep]


def _check_ids(ids: Any, n: int) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{len(arr)} ids for {n} codes.")
    return arr


class FaissCodeIndex:
    """The embedded :class:`~retrieval.search.base.CodeIndex` (files in ``directory``).

    ``shortlist`` and ``max_radius`` tune the coarse stage; ``mih_min`` is the size from
    which the coarse stage uses multi-index hashing instead of a 64-bit scan; ``threads``
    how many threads one large scan is split over.
    """

    def __init__(
        self,
        directory: Path,
        *,
        shortlist: int = SHORTLIST,
        max_radius: int = MAX_RADIUS,
        mih_min: int = MIH_MIN_CODES,
        threads: int = THREADS,
    ) -> None:
        self.directory = Path(directory)
        self.shortlist = int(shortlist)
        self.max_radius = int(max_radius)
        self.mih_min = int(mih_min)
        self.threads = max(1, int(threads))
        self._lock = threading.RLock()
        self._state = _State()
        self._dirty = False
        self._seen: tuple | None = None
        self.load_error: str | None = None
        self._load()

    # ------------------------------------------------------------------ reading

    def count(self) -> int:
        self._maybe_reload()
        return self._state.count

    def stats(self) -> dict[str, Any]:
        self._maybe_reload()
        s = self._state
        return {
            "count": s.count,
            "method": s.method,
            "sealed": s.sealed,
            "tail": len(s.tail_ids),
            "tombstones": s.n_dead,
            "memory_bytes": s.nbytes,
            "shortlist": self.shortlist,
            "max_radius": self.max_radius,
            "threads": self.threads,
            "directory": str(self.directory),
            "load_error": self.load_error,
        }

    def search(
        self, code: np.ndarray, k: int, *, coarse_only: bool = False
    ) -> list[tuple[int, int]]:
        """The ``k`` nearest ids as ``(id, 256-bit distance)``, nearest first, ties by id.

        ``coarse_only`` ranks by the 64-bit distance alone and returns it (the one-stage
        variant the benchmark reports). Codes beyond the coarse stage's reach (more than
        15 of 64 bits away on a large index) are not returned, so fewer than ``k`` can
        come back.
        """
        code = check_codes(code, single=True)
        self._maybe_reload()
        return _search(self._state, code, int(k), self._params(), coarse_only)

    def search_batch(
        self, codes: np.ndarray, k: int, *, coarse_only: bool = False
    ) -> list[list[tuple[int, int]]]:
        """:meth:`search` for each row of ``(m, 32)`` codes, on one version of the index."""
        codes = check_codes(codes)
        self._maybe_reload()
        state, params = self._state, self._params()
        return [_search(state, code, int(k), params, coarse_only) for code in codes]

    def _params(self) -> tuple[int, int, int]:
        return self.shortlist, self.max_radius, self.threads

    def live_ids(self) -> np.ndarray:
        """The ids the index holds now (sorted)."""
        self._maybe_reload()
        s = self._state
        return np.sort(np.concatenate([np.asarray(s.ids)[~s.dead], s.tail_ids]))

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writing(self, wait: Callable[[], None] | None = None) -> Iterator[FaissCodeIndex]:
        """Hold the exclusive write lock of the directory (one writer per version across
        processes), reloading the files once it is held, so this object changes the
        index as the last writer left it. ``wait`` is called about once a second while
        another writer holds the lock (it may raise to give up, e.g. a cancelled job)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / WRITE_LOCK, "a+b") as handle:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if wait is not None:
                        wait()
                    time.sleep(1.0)
            try:
                with self._lock:
                    self._dirty = False
                    self._load()
                yield self
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        codes = check_codes(codes)
        ids = _check_ids(ids, len(codes))
        if len(ids) == 0:
            return
        ids, codes = _last_wins(ids, codes)
        with self._lock:
            s = self._state
            dead, n_dead = self._kill(s, ids)
            keep = ~np.isin(s.tail_ids, ids)
            tail_ids = np.concatenate([s.tail_ids[keep], ids])
            tail_codes = np.concatenate([s.tail_codes[keep], codes])
            self._publish(
                _replace(s, dead=dead, n_dead=n_dead, tail_ids=tail_ids, tail_codes=tail_codes)
            )

    def remove(self, ids: Iterable[int]) -> int:
        if isinstance(ids, np.ndarray):
            ids = np.unique(ids.astype(np.int64).reshape(-1))
        else:
            ids = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64))
        with self._lock:
            s = self._state
            dead, n_dead = self._kill(s, ids)
            keep = ~np.isin(s.tail_ids, ids)
            removed = (n_dead - s.n_dead) + int((~keep).sum())
            if removed:
                self._publish(
                    _replace(
                        s,
                        dead=dead,
                        n_dead=n_dead,
                        tail_ids=s.tail_ids[keep],
                        tail_codes=s.tail_codes[keep],
                    )
                )
            return removed

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Index exactly these batches (later rows replace earlier ones with the same id);
        call :meth:`persist` to write it."""
        id_parts, code_parts = [], []
        for ids, codes in batches:
            codes = check_codes(codes)
            id_parts.append(_check_ids(ids, len(codes)))
            code_parts.append(codes)
        ids = np.concatenate(id_parts) if id_parts else _EMPTY_IDS
        codes = np.concatenate(code_parts) if code_parts else _EMPTY_CODES
        del id_parts, code_parts
        if len(ids):
            ids, codes = _last_wins(ids, codes)
        state = seal(ids, codes, mih_min=self.mih_min)
        with self._lock:
            self._state = state
            self._dirty = True

    def compact(self) -> None:
        """Seal the live codes (tail included) into a new segment, dropping tombstones."""
        with self._lock:
            s = self._state
            live = ~s.dead
            ids = np.concatenate([s.ids[live], s.tail_ids])
            codes = np.concatenate([s.codes[live], s.tail_codes])
            order = np.argsort(ids, kind="stable")  # a stable layout, whatever the history
            self._state = seal(ids[order], codes[order], mih_min=self.mih_min)
            self._dirty = True

    def _kill(self, s: _State, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """Tombstones after removing ``ids`` from the segment (copy-on-write)."""
        pos = s.sealed_positions(ids)
        if len(pos) == 0:
            return s.dead, s.n_dead
        dead = s.dead.copy()
        dead[pos] = True
        return dead, s.n_dead + len(pos)

    def _publish(self, state: _State) -> None:
        self._state = state
        self._dirty = True
        tail_limit = max(TAIL_MIN, state.sealed // TAIL_FRACTION)
        too_dead = state.sealed and state.n_dead > DEAD_FRACTION * state.sealed
        wrong_method = (state.count >= self.mih_min) != (state.tables is not None)
        if len(state.tail_ids) > tail_limit or too_dead or (wrong_method and state.tail_ids.size):
            self.compact()

    # ------------------------------------------------------------------ files

    def persist(self) -> None:
        """Write the segment (when new), the tail and tombstones, then the manifest."""
        with self._lock:
            s = self._state
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = f"{time.time_ns()}-{os.getpid()}"
            if not s.segment:
                s = _replace(s, segment=f"seg-{stamp}")
                self._write_segment(s)
            delta = f"delta-{stamp}.npz"
            _atomic_write(
                self.directory / delta,
                lambda f: np.savez(
                    f,
                    tail_ids=s.tail_ids,
                    tail_codes=s.tail_codes,
                    dead=np.packbits(s.dead),
                ),
            )
            previous = self._read_manifest()
            manifest = {
                "format": FORMAT,
                "segment": s.segment,
                "delta": delta,
                "count": s.count,
                "method": s.method,
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "previous": [previous.get("segment"), previous.get("delta")] if previous else [],
            }
            _atomic_write(
                self.directory / MANIFEST, lambda f: f.write(json.dumps(manifest).encode())
            )
            self._state = s
            self._dirty = False
            self._seen = self._manifest_stat()
            self._clean(keep={s.segment, delta, *manifest["previous"]})

    def _write_segment(self, s: _State) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-seg-", dir=self.directory))
        try:
            np.save(tmp / "ids.npy", s.ids)
            np.save(tmp / "codes.npy", s.codes)
            np.save(tmp / "lookup_ids.npy", s.lookup_ids)
            np.save(tmp / "lookup_pos.npy", s.lookup_pos)
            if s.tables is not None:
                s.tables.save(tmp)
            for f in tmp.iterdir():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, self.directory / s.segment)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _clean(self, keep: set) -> None:
        """Delete segments and deltas neither current nor previous (a reader that read
        the previous manifest a moment ago can still open its files)."""
        for path in self.directory.iterdir():
            name = path.name
            if name in keep or not name.startswith(("seg-", "delta-", ".tmp-")):
                continue
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                continue
            if name.startswith(".tmp-") and age < 3600:
                continue  # another writer may be writing it now
            if age < CLEAN_GRACE_S:
                continue  # another writer may have just moved it into place
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _manifest_stat(self) -> tuple | None:
        try:
            st = os.stat(self.directory / MANIFEST)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read_manifest(self) -> dict:
        try:
            return json.loads((self.directory / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}

    def _maybe_reload(self) -> None:
        """Reload when another process persisted (one ``stat`` per call)."""
        if self._manifest_stat() != self._seen and not self._dirty:
            with self._lock:
                if self._manifest_stat() != self._seen and not self._dirty:
                    self._load()

    def _load(self) -> None:
        """Open the files in ``directory``; anything unreadable → empty, with a log line
        (the web process must keep serving; a rebuild rewrites the files)."""
        for attempt in range(3):
            seen = self._manifest_stat()
            if seen is None:
                self._state, self._seen, self.load_error = _State(), None, None
                return
            try:
                state = self._read_files()
            except FileNotFoundError:
                if attempt < 2:  # a writer replaced the files between two reads
                    continue
                error = "files named by the manifest are missing"
            except (OSError, ValueError, KeyError, TypeError, CodeLengthMismatch) as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                self._state, self._seen, self.load_error = state, seen, None
                return
            break
        self.load_error = (
            f"The similarity index in {self.directory} could not be read ({error}); "
            "it is treated as empty until it is rebuilt."
        )
        logger.error(self.load_error)
        self._state, self._seen = _State(), self._manifest_stat()

    def _read_files(self) -> _State:
        manifest = json.loads((self.directory / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"unknown index format {manifest.get('format')!r}")
        folder = self.directory / manifest["segment"]
        ids = np.load(folder / "ids.npy", mmap_mode="r")
        codes = np.load(folder / "codes.npy", mmap_mode="r")
        lookup_ids = np.load(folder / "lookup_ids.npy", mmap_mode="r")
        lookup_pos = np.load(folder / "lookup_pos.npy", mmap_mode="r")
        n = len(ids)
        if (
            ids.dtype != np.int64
            or codes.dtype != np.uint8
            or lookup_pos.shape != (n,)
            or lookup_ids.shape != (n,)
        ):
            raise ValueError("segment arrays of the wrong type")
        if codes.shape != (n, CODE_BYTES):
            raise CodeLengthMismatch(f"segment codes have shape {codes.shape}")
        tables = MihTables.load(folder) if (folder / "positions.npy").exists() else None
        if tables is not None:
            if tables.size != n:
                raise ValueError("MIH tables do not match the segment")
            for array in (tables.positions, tables.sorted64, codes, ids):
                _prefault(array)
        with np.load(self.directory / manifest["delta"]) as delta:
            tail_ids = delta["tail_ids"].astype(np.int64)
            tail_codes = check_codes(delta["tail_codes"])
            dead = np.unpackbits(delta["dead"], count=n).astype(bool)
        if len(tail_ids) != len(tail_codes):
            raise ValueError("tail ids and codes differ in length")
        return _State(
            ids=ids,
            codes=codes,
            dead=dead,
            n_dead=int(dead.sum()),
            tables=tables,
            packed=None if tables is not None else coarse64(np.asarray(codes)),
            flat=None if tables is not None else _flat_index(np.asarray(codes)),
            lookup_ids=lookup_ids,
            lookup_pos=lookup_pos,
            tail_ids=tail_ids,
            tail_codes=tail_codes,
            segment=manifest["segment"],
        )


def _prefault(array: np.ndarray) -> None:
    """Touch one byte per page of a memory-mapped array: mapping pages on first use
    (a minor fault each) would otherwise slow the first thousands of searches."""
    flat = array.reshape(-1).view(np.uint8)
    int(flat[:: mmap.PAGESIZE].sum())


def _replace(state: _State, **changes: Any) -> _State:
    values = {name: getattr(state, name) for name in state.__dataclass_fields__}
    values.update(changes)
    values["cache"] = {}
    if "segment" not in changes and any(
        k in changes for k in ("ids", "codes", "tables", "lookup_ids", "lookup_pos")
    ):
        values["segment"] = ""
    return _State(**values)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _search(
    s: _State, code: np.ndarray, k: int, params: tuple[int, int, int], coarse_only: bool
) -> list[tuple[int, int]]:
    """Coarse candidates (MIH, plus the tail), shortlist, 256-bit re-ranking; small
    indexes search FAISS's exhaustive index directly (exact)."""
    if k <= 0 or s.count == 0:
        return []
    if s.tables is None and not coarse_only:
        return _search_exhaustive(s, code, k)
    shortlist, max_radius, threads = params
    # Cuts count a code once per subcode table that found it (at most SUBCODES times):
    # SUBCODES · k candidates always hold k distinct codes.
    want = max(SUBCODES * k, 0 if coarse_only else shortlist)
    pos, dist = _candidates(s, code, want, want, max_radius, threads)
    if len(pos) == 0:
        return []
    ids, final, coarse = _rank(s, code, pos, dist, want, k, coarse_only)
    # Hard queries: when the best results sit, on average, at the edge of what the
    # coarse stage guarantees, their 64-bit distances are a poor guide and the
    # shortlist is crowded with unrelated codes that happen to be close on 64 bits;
    # re-rank a wider shortlist then (measured: docs/similarity-search.md). Done as a
    # second pass so that the common case does not pay for the wide one.
    if not coarse_only and len(coarse) and coarse.mean() > guaranteed_radius(max_radius):
        wide = WIDE_FACTOR * want
        pos, dist = _candidates(s, code, wide, want, max_radius, threads)
        if len(pos) > want:
            ids, final, _ = _rank(s, code, pos, dist, wide, k, False)
    return list(zip(ids.tolist(), final.tolist(), strict=True))


def _candidates(
    s: _State, code: np.ndarray, size: int, enough: int, max_radius: int, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """About ``size`` coarse candidates ``(positions, 64-bit distances)``: MIH over the
    segment (or a scan of it, for the 64-bit variant on a small index), tombstones
    dropped, plus every code of the tail (positions ``sealed, sealed + 1, …``)."""
    query64 = coarse64(code[None, :])[0]
    if s.tables is not None:
        pos, dist, _ = coarse_search(
            s.tables, code, size, max_radius, enough=enough, threads=threads
        )
    else:
        pos = np.arange(s.sealed, dtype=np.int64)
        packed = s.packed if s.packed is not None else np.zeros(0, dtype=np.uint64)
        dist = hamming64(packed, query64)
    if s.n_dead and len(pos):
        live = ~s.dead[pos]
        pos, dist = pos[live], dist[live]
    if len(s.tail_ids):
        pos = np.concatenate([pos, np.arange(len(s.tail_ids), dtype=np.int64) + s.sealed])
        dist = np.concatenate([dist, hamming64(coarse64(s.tail_codes), query64)])
    return pos, dist


def _rank(
    s: _State,
    code: np.ndarray,
    pos: np.ndarray,
    dist: np.ndarray,
    size: int,
    k: int,
    coarse_only: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``size`` coarse-nearest candidates (ties kept), deduplicated and ranked by the
    256-bit distance (or the 64-bit one when ``coarse_only``), ties by id: the top ``k``
    as ``(ids, distances, coarse distances)``."""
    cut = dist <= threshold_for(dist, size)
    pos, first = np.unique(pos[cut], return_index=True)
    dist = dist[cut][first].astype(np.int64)
    if len(s.tail_ids) == 0:
        ids = s.ids[pos]
        codes = None if coarse_only else s.codes[pos]
    else:
        in_tail = pos >= s.sealed
        ids = np.empty(len(pos), dtype=np.int64)
        ids[~in_tail] = s.ids[pos[~in_tail]]
        ids[in_tail] = s.tail_ids[pos[in_tail] - s.sealed]
        codes = None
        if not coarse_only:
            codes = np.empty((len(pos), CODE_BYTES), dtype=np.uint8)
            codes[~in_tail] = s.codes[pos[~in_tail]]
            codes[in_tail] = s.tail_codes[pos[in_tail] - s.sealed]
    final = dist if codes is None else hamming256(codes, code)
    order = np.lexsort((ids, final))[:k]
    return ids[order], final[order], dist[order]


def _search_exhaustive(s: _State, code: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Small indexes: FAISS ``IndexBinaryFlat`` on all 256 bits (exact) over the segment,
    a numpy scan over the tail, merged."""
    ids_parts, dist_parts = [], []
    live = s.sealed - s.n_dead
    if live:
        params = _live_filter(s) if s.n_dead else None
        distances, labels = _one_thread(
            lambda: s.flat.search(code[None, :], min(k, live), params=params)
        )
        found = labels[0] >= 0
        ids_parts.append(s.ids[labels[0][found]])
        dist_parts.append(distances[0][found].astype(np.int64))
    if len(s.tail_ids):
        ids_parts.append(s.tail_ids)
        dist_parts.append(hamming256(s.tail_codes, code))
    ids, final = np.concatenate(ids_parts), np.concatenate(dist_parts)
    order = np.lexsort((ids, final))[:k]
    return list(zip(ids[order].tolist(), final[order].tolist(), strict=True))


def _one_thread(call):
    """Run a FAISS call on one OpenMP thread (the setting is per calling thread, restored
    after): for one query, ``IndexBinaryFlat`` measured faster on one thread than on two
    at every size tried here (1 M: 1.9 vs 3.1 ms; 3 M: 5.8 vs 8.9 ms; 10 M: 19 vs 31 ms)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return call()
    finally:
        faiss.omp_set_num_threads(before)
