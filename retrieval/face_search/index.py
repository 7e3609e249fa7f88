"""The FAISS index over face embeddings: exact while small, IVF beyond a size threshold.

Face embeddings are 512-d and L2-normalised (FaceNet, DESIGN.md 5 / seed 6.3.3), so the
inner product *is* the cosine similarity. Up to ``exact_max`` faces the index is an exact
``IndexIDMap2(IndexFlatIP)``: at 100,000 faces an exhaustive scan costs a few ms and every
answer is right. Above it, the thesis asks for product quantisation / IVF (6.3.3): we use an
inverted file over ``nlist ≈ 4·√N`` k-means cells with 8-bit scalar-quantised vectors
(``IVF<nlist>,SQ8``, 512 bytes a face: a quarter of flat float32), searched with ``nprobe``
cells. ``docs/face-search.md`` has the measurements that chose this type over IVF-Flat,
IVF-PQ with a refine stage and HNSW. The type is decided on :meth:`FaceIndex.rebuild`
only, so an index never changes its nature under incremental adds; the status says when a
rebuild would switch it.

Files (``directory``): ``meta.json`` names the current index file ``faces-<token>.faiss``.
:meth:`persist` writes a new index file first and then replaces ``meta.json`` atomically,
so a reader always sees a complete (index, meta) pair; older index files are deleted after.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIM = 512
META = "meta.json"
EXACT = "exact"
IVF = "ivf"
# IVF parameters (docs/face-search.md): cells ≈ 2·√N, 32 training vectors per cell and
# 10 k-means iterations (build time on 2 cores), nprobe chosen for recall@100 ≥ 0.9.
IVF_CELLS_PER_SQRT_N = 2
IVF_TRAIN_PER_CELL = 32
IVF_TRAIN_ITERATIONS = 10
IVF_MIN_CELLS = 64
IVF_MAX_CELLS = 65536
# Share of the cells searched (docs/face-search.md): 4 % gave recall@100 0.912 at 1 M faces,
# 5 % gave 0.925 at a quarter more CPU; 4.5 % keeps a margin above 0.9.
NPROBE_SHARE = 0.045
MIN_NPROBE = 16
DEFAULT_ENCODING = "SQ8"


class FaceIndexError(Exception):
    """The index files are missing, damaged or do not fit; the message is for the user."""


def _faiss():
    import faiss  # lazily: the web process imports this module without needing faiss yet

    return faiss


def normalise(vectors: Any) -> np.ndarray:
    """float32, C-contiguous, shape (n, 512), rows of unit length (zero rows stay zero).

    The one unit-length helper of the face code (person training, face clustering, this
    index); always a new array, the caller's is never changed."""
    arr = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != DIM:
        raise ValueError(f"Face vectors have {DIM} values, not shape {arr.shape}.")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    np.divide(arr, norms, out=arr, where=norms > 0)
    return arr


def nprobe_for(nlist: int) -> int:
    return int(min(nlist, max(MIN_NPROBE, round(nlist * NPROBE_SHARE))))


def ivf_cells(n: int) -> int:
    """Number of IVF cells for ``n`` faces (≈ 2·√N, a power of two for tidy numbers)."""
    target = IVF_CELLS_PER_SQRT_N * math.sqrt(max(n, 1))
    cells = 2 ** round(math.log2(max(target, 1)))
    return int(min(IVF_MAX_CELLS, max(IVF_MIN_CELLS, cells)))


@dataclass
class IndexSpec:
    """What kind of index to build for a given number of faces."""

    kind: str  # EXACT | IVF
    nlist: int = 0
    nprobe: int = 0
    encoding: str = DEFAULT_ENCODING

    @classmethod
    def for_size(cls, n: int, exact_max: int, encoding: str = DEFAULT_ENCODING) -> IndexSpec:
        if n <= exact_max:
            return cls(EXACT)
        nlist = ivf_cells(n)
        return cls(IVF, nlist=nlist, nprobe=nprobe_for(nlist), encoding=encoding)

    @property
    def factory(self) -> str:
        if self.kind == EXACT:
            return "IDMap2,Flat"
        return f"IVF{self.nlist},{self.encoding}"

    @property
    def label(self) -> str:
        if self.kind == EXACT:
            return "exact (IndexFlatIP)"
        return f"IVF{self.nlist},{self.encoding} (nprobe {self.nprobe})"

    def train_size(self) -> int:
        return 0 if self.kind == EXACT else self.nlist * IVF_TRAIN_PER_CELL


def configure_search(index, spec: IndexSpec) -> None:
    """Search-time parameters (not stored in the file): cells probed, and one query's
    cells spread over the threads — the page sends single queries, and faiss parallelises
    over queries by default, which would leave all but one core idle."""
    if spec.kind == IVF:
        ivf = _faiss().extract_index_ivf(index)
        ivf.nprobe = spec.nprobe
        ivf.parallel_mode = 1


def build_empty(spec: IndexSpec):
    """A new, untrained index of ``spec`` with inner-product metric and native ids."""
    faiss = _faiss()
    index = faiss.index_factory(DIM, spec.factory, faiss.METRIC_INNER_PRODUCT)
    configure_search(index, spec)
    if spec.kind == IVF:
        ivf = faiss.extract_index_ivf(index)
        # The training sample may be smaller than faiss's favourite 256 per cell.
        ivf.cp.min_points_per_centroid = 5
        ivf.cp.max_points_per_centroid = IVF_TRAIN_PER_CELL
        ivf.cp.niter = IVF_TRAIN_ITERATIONS
    return index


class FaceIndex:
    """Face ids → unit vectors, searchable by cosine similarity; lives in ``directory``.

    Thread safety: one lock guards the FAISS object (adds and searches from the web
    process's threads). Between processes the files are the contract (see module doc).
    """

    def __init__(self, directory: Path, *, exact_max: int | None = None):
        self.directory = Path(directory)
        self.exact_max = exact_max
        self.lock = threading.RLock()
        self.index = None
        self.spec = IndexSpec(EXACT)
        self.meta: dict[str, Any] = {}
        self.file_token = ""
        self.load()

    # --- files ------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.directory / META

    def meta_stamp(self) -> tuple[int, int] | None:
        """(mtime_ns, size) of ``meta.json``; a change means another process persisted."""
        try:
            st = self.meta_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def load(self) -> None:
        """Read the files named by ``meta.json``; an empty exact index when there are none."""
        faiss = _faiss()
        with self.lock:
            self.loaded_stamp = self.meta_stamp()
            try:
                meta = json.loads(self.meta_path.read_text())
            except FileNotFoundError:
                self._reset(IndexSpec(EXACT))
                return
            except (OSError, ValueError) as exc:
                raise FaceIndexError(
                    f"The face index in {self.directory} is damaged: {exc}"
                ) from exc
            path = self.directory / meta["file"]
            try:
                self.index = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise FaceIndexError(
                    f"The face index file {path.name} cannot be read ({exc}); rebuild the index."
                ) from exc
            spec = meta.get("spec") or {}
            self.spec = IndexSpec(**spec) if spec else IndexSpec(EXACT)
            configure_search(self.index, self.spec)
            self.meta = meta
            self.file_token = meta["file"]

    def _reset(self, spec: IndexSpec) -> None:
        self.spec = spec
        self.index = build_empty(spec)
        self.meta = {"last_id": 0, "built_at": None, "spec": vars(spec)}
        self.file_token = ""

    def persist(self, **extra: Any) -> None:
        """Write the index atomically (new file, then ``meta.json`` replaced); extra → meta."""
        faiss = _faiss()
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.lock:
            name = f"faces-{uuid.uuid4().hex[:12]}.faiss"
            tmp = self.directory / (name + ".tmp")
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, self.directory / name)
            meta = {
                **self.meta,
                **extra,
                "file": name,
                "spec": vars(self.spec),
                "count": self.count,
                "persisted_at": time.time(),
            }
            meta_tmp = self.directory / (META + f".{uuid.uuid4().hex[:8]}.tmp")
            meta_tmp.write_text(json.dumps(meta))
            os.replace(meta_tmp, self.meta_path)
            self.meta = meta
            self.file_token = name
            self.loaded_stamp = self.meta_stamp()
        self._delete_old_files(keep=name)

    def _delete_old_files(self, keep: str) -> None:
        for path in self.directory.glob("faces-*.faiss*"):
            if path.name == keep:
                continue
            # Another process may be writing its own ".tmp" right now: leave young ones.
            try:
                if path.suffix == ".tmp" and time.time() - path.stat().st_mtime < 3600:
                    continue
                path.unlink()
            except FileNotFoundError:
                pass

    # --- contents ---------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.index.ntotal) if self.index is not None else 0

    @property
    def last_id(self) -> int:
        """The highest face id ever added (incremental updates continue above it)."""
        return int(self.meta.get("last_id") or 0)

    def add(self, face_ids: Sequence[int], vectors: Any) -> int:
        """Add faces (vectors are normalised here); ids already present are replaced."""
        ids = np.ascontiguousarray(np.asarray(face_ids, dtype=np.int64).reshape(-1))
        if ids.size == 0:
            return 0
        vecs = normalise(vectors)
        if vecs.shape[0] != ids.size:
            raise ValueError("One vector per face id.")
        with self.lock:
            if not self.index.is_trained:
                raise FaceIndexError("The approximate face index is not trained; rebuild it.")
            old = ids[ids <= self.last_id]  # only those can be present (a scan on IVF)
            if old.size:
                self.index.remove_ids(_faiss().IDSelectorBatch(old))
            self.index.add_with_ids(vecs, ids)
            self.meta["last_id"] = max(self.last_id, int(ids.max()))
        return int(ids.size)

    def remove(self, face_ids: Iterable[int]) -> int:
        ids = np.asarray(list(face_ids), dtype=np.int64)
        if ids.size == 0:
            return 0
        with self.lock:
            return int(self.index.remove_ids(_faiss().IDSelectorBatch(ids)))

    def search(self, vector: Any, k: int) -> list[tuple[int, float]]:
        """The ``k`` most similar faces: (face id, cosine similarity), best first."""
        return self.search_batch(vector, k)[0]

    def search_batch(self, vectors: Any, k: int) -> list[list[tuple[int, float]]]:
        queries = normalise(vectors)
        with self.lock:
            if self.count == 0 or k <= 0:
                return [[] for _ in range(queries.shape[0])]
            sims, ids = self.index.search(queries, int(min(k, self.count)))
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_sims, strict=True) if i >= 0]
            for row_ids, row_sims in zip(ids, sims, strict=True)
        ]

    # --- building ---------------------------------------------------------------------
    def rebuild(
        self,
        batches: Iterable[tuple[Sequence[int], Any]],
        *,
        total: int | None = None,
        sample: Any = None,
        exact_max: int | None = None,
        spec: IndexSpec | None = None,
        progress=None,
        persist: bool = True,
    ) -> dict[str, Any]:
        """Replace the contents with ``batches`` of (ids, vectors); ``total`` faces expected.

        The index type follows ``total`` (exact up to ``exact_max``, IVF above). An IVF
        index is trained on ``sample`` (a random subset of the embeddings, given by the
        caller who can draw one cheaply) or else on the first batches. The live index is
        replaced only when the new one is complete; ``progress(done, total)`` is called
        per batch. ``spec`` overrides the choice (benchmarks). Returns timings and the spec.
        """
        if total is None:  # the caller did not count: read the batches first
            batches = list(batches)
            total = sum(len(ids) for ids, _ in batches)
        limit = exact_max if exact_max is not None else (self.exact_max or 0)
        spec = spec or IndexSpec.for_size(total, limit)
        t0 = time.perf_counter()
        index = build_empty(spec)
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        train_s = 0.0
        if spec.kind == IVF:
            if sample is None:
                sample_rows: list[np.ndarray] = []
                have = 0
                iterator = iter(batches)
                for ids, vecs in iterator:
                    arr = normalise(vecs)
                    pending.append((np.asarray(ids, dtype=np.int64), arr))
                    sample_rows.append(arr)
                    have += arr.shape[0]
                    if have >= spec.train_size():
                        break
                batches = iterator
                sample = np.concatenate(sample_rows) if sample_rows else np.zeros((0, DIM))
            sample = normalise(sample)
            if sample.shape[0] < spec.nlist:
                raise FaceIndexError(
                    f"Too few faces ({sample.shape[0]}) to train {spec.nlist} IVF cells."
                )
            t1 = time.perf_counter()
            index.train(sample)
            train_s = time.perf_counter() - t1
        done = 0
        last_id = 0

        def put(ids: np.ndarray, vecs: np.ndarray) -> None:
            nonlocal done, last_id
            if ids.size:
                index.add_with_ids(vecs, ids)
                last_id = max(last_id, int(ids.max()))
            done += int(ids.size)
            if progress is not None:
                progress(done, total)

        for ids, vecs in pending:
            put(ids, vecs)
        for ids, vecs in batches:
            put(np.ascontiguousarray(np.asarray(ids, dtype=np.int64)), normalise(vecs))
        with self.lock:
            self.index = index
            self.spec = spec
            self.meta = {"last_id": last_id, "built_at": time.time(), "spec": vars(spec)}
        build_s = time.perf_counter() - t0
        if persist:
            self.persist(build_s=round(build_s, 2), train_s=round(train_s, 2))
        return {"type": spec.label, "count": self.count, "build_s": build_s, "train_s": train_s}

    # --- status -----------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Approximate resident size: the serialised index (what a reader maps in)."""
        with self.lock:
            if self.count == 0:
                return 0
            return int(_faiss().serialize_index(self.index).size)

    def stats(self) -> dict[str, Any]:
        """What the status box shows: size, type, when built, whether a rebuild is due."""
        wanted = (
            IndexSpec.for_size(self.count, self.exact_max) if self.exact_max is not None else None
        )
        return {
            "count": self.count,
            "kind": self.spec.kind,
            "type": self.spec.label,
            "nlist": self.spec.nlist,
            "nprobe": self.spec.nprobe,
            "last_id": self.last_id,
            "built_at": self.meta.get("built_at"),
            "persisted_at": self.meta.get("persisted_at"),
            "build_s": self.meta.get("build_s"),
            # A rebuild changes the type (exact ↔ IVF) or the IVF grew 4× past its cells.
            "rebuild_advised": bool(
                wanted
                and (
                    wanted.kind != self.spec.kind
                    or (wanted.kind == IVF and wanted.nlist >= 2 * self.spec.nlist)
                )
            ),
        }
