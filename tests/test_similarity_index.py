"""The embedded hash-code index (issue 6): Hamming and multi-index hashing against brute
force on random and clustered codes, and the FAISS backend's add / remove / replace /
persist / reload / rebuild, refusal of wrong code lengths, corrupt files."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from retrieval.benchmarks.similarity import clustered_codes, flip_table, flips
from retrieval.search import faiss_index, mih
from retrieval.search.base import CodeIndex, CodeLengthMismatch
from retrieval.search.faiss_index import FaissCodeIndex


def brute256(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Bit by bit, independent of the implementation under test."""
    return np.unpackbits(codes ^ query, axis=1).sum(axis=1).astype(np.int64)


def brute64(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    return brute256(codes[:, :8], query[:8])


def random_codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32), dtype=np.uint8)


def clustered(n: int, clusters: int, seed: int = 0) -> np.ndarray:
    return np.concatenate(
        [c for _, c in clustered_codes(n, clusters=clusters, seed=seed, chunk=5000)]
    )


def near(codes: np.ndarray, rows: np.ndarray, p: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return codes[rows] ^ flips(rng, flip_table(p), len(rows))


def exact_top(codes: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int):
    d = brute256(codes, query)
    order = np.lexsort((ids, d))[:k]
    return [(int(ids[i]), int(d[i])) for i in order]


# ---------------------------------------------------------------- Hamming, MIH


def test_hamming_matches_bit_counting():
    codes = random_codes(500)
    query = random_codes(1, seed=9)[0]
    assert np.array_equal(mih.hamming256(codes, query), brute256(codes, query))
    coarse = mih.hamming64(mih.coarse64(codes), mih.coarse64(query[None])[0])
    assert np.array_equal(coarse.astype(np.int64), brute64(codes, query))


def test_flip_table_has_the_asked_bit_rate():
    table = flip_table(0.12)
    assert len(table) == 65536
    assert np.unpackbits(table).mean() == pytest.approx(0.12, abs=1e-3)


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_mih_finds_every_code_within_the_guaranteed_radius(kind):
    codes = random_codes(20_000) if kind == "random" else clustered(20_000, clusters=40)
    tables = mih.MihTables.build(codes)
    rng = np.random.default_rng(3)
    queries = np.concatenate(
        [random_codes(3, seed=4), near(codes, rng.integers(0, 20_000, 5), 0.1)]
    )
    keys = mih.subcode_keys(codes)
    for query in queries:
        truth = brute64(codes, query)
        qkeys = mih.subcode_keys(query[None])[0]
        sub = np.stack(
            [np.bitwise_count((keys[:, t] ^ qkeys[t]).astype(np.uint16)) for t in range(4)], 1
        )
        for r in range(3):
            pos, dist = tables.candidates(query, r)
            radius = mih.guaranteed_radius(r)
            assert radius == 4 * r + 3
            # Every code within the guaranteed radius is found …
            assert set(np.flatnonzero(truth <= radius)) <= set(pos.tolist())
            # … exactly the codes with some subcode within r are probed …
            assert set(pos.tolist()) == set(np.flatnonzero((sub <= r).any(axis=1)))
            # … with their true coarse distances.
            assert np.array_equal(dist.astype(np.int64), truth[pos])


@pytest.mark.parametrize("threads", [1, 2])
def test_coarse_search_shortlist_is_the_coarse_top(threads, monkeypatch):
    monkeypatch.setattr(mih, "PARALLEL_MIN", 10)  # exercise the split even on few codes
    codes = clustered(30_000, clusters=30)
    tables = mih.MihTables.build(codes)
    query = near(codes, np.array([123]), 0.05)[0]
    truth = brute64(codes, query)
    pos, dist, r = mih.coarse_search(tables, query, 300, 3, threads=threads)
    assert np.array_equal(dist.astype(np.int64), truth[pos])
    found = set(pos.tolist())
    cut = int(dist.max())
    scanned, _ = tables.candidates(query, r)
    # Nothing scanned and nearer than the cut is left out of the shortlist.
    assert {p for p in set(scanned.tolist()) if truth[p] < cut} <= found
    if r < 3:  # stopped early: the shortlist is the exact coarse top over all codes
        assert set(np.flatnonzero(truth < cut)) <= found
        assert len(found) >= 300


def test_coarse_search_stops_early_on_near_duplicates():
    base = random_codes(1, seed=5)[0]
    dupes = np.repeat(base[None], 2000, axis=0) ^ flips(
        np.random.default_rng(6), flip_table(0.01), 2000
    )
    codes = np.concatenate([random_codes(20_000), dupes])
    tables = mih.MihTables.build(codes)
    pos, dist, r = mih.coarse_search(tables, base, 500, 3)
    assert r < 3
    truth = brute64(codes, base)
    assert set(np.flatnonzero(truth < int(dist.max()))) <= set(pos.tolist())


# ---------------------------------------------------------------- the index


@pytest.fixture(params=["exhaustive", "mih"])
def make_index(request, tmp_path):
    mih_min = 0 if request.param == "mih" else 10**9

    def make(**kwargs):
        return FaissCodeIndex(tmp_path / "index", mih_min=mih_min, **kwargs)

    make.method = request.param
    return make


def test_implements_the_contract(tmp_path):
    index = FaissCodeIndex(tmp_path)
    assert isinstance(index, CodeIndex)
    assert index.count() == 0
    assert index.search(random_codes(1)[0], 10) == []


def test_search_matches_brute_force(make_index):
    codes = clustered(12_000, clusters=24)
    ids = np.arange(12_000, dtype=np.int64) * 7 + 3
    index = make_index()
    index.add(ids, codes)
    assert index.stats()["method"] == make_index.method
    queries = near(codes, np.arange(0, 12_000, 1500), 0.05)
    recalls = []
    for query in queries:
        got = index.search(query, 50)
        want = exact_top(codes, ids, query, 50)
        assert [d for _, d in got] == sorted(d for _, d in got)
        assert got == sorted(got, key=lambda hit: (hit[1], hit[0]))  # ties by id
        truth = dict(zip(ids.tolist(), brute256(codes, query).tolist(), strict=True))
        assert all(truth[i] == d for i, d in got)  # true 256-bit distances
        if make_index.method == "exhaustive":
            assert [d for _, d in got] == [d for _, d in want]
        kth = want[-1][1]
        recalls.append(sum(d <= kth for _, d in got) / 50)
    assert np.mean(recalls) >= (1.0 if make_index.method == "exhaustive" else 0.95)


def test_add_replace_remove_persist_reload(make_index):
    codes = random_codes(3000)
    ids = np.arange(1000, 4000, dtype=np.int64)
    index = make_index()
    index.add(ids[:2000], codes[:2000])
    index.add(ids[2000:], codes[2000:])  # incremental: lands in the tail
    assert index.count() == 3000
    assert index.search(codes[10], 1) == [(1010, 0)]
    assert index.search(codes[2500], 1) == [(3500, 0)]

    new = random_codes(1, seed=77)[0]
    index.add(np.array([1010]), new[None])  # replace: same id, new code
    assert index.count() == 3000
    assert index.search(new, 1) == [(1010, 0)]
    assert all(i != 1010 for i, _ in index.search(codes[10], 5))

    assert index.remove([1011, 3500, 999_999]) == 2
    assert index.remove([1011]) == 0
    assert index.count() == 2998
    hits = dict(index.search(codes[11], 20))
    assert 1011 not in hits and 3500 not in dict(index.search(codes[2500], 20))

    before = [index.search(codes[i], 10) for i in (0, 500, 2999)]
    index.persist()
    reopened = make_index()
    assert reopened.count() == 2998
    assert [reopened.search(codes[i], 10) for i in (0, 500, 2999)] == before
    assert reopened.search(new, 1) == [(1010, 0)]
    assert reopened.stats()["method"] == make_index.method


def test_duplicate_ids_in_one_batch_keep_the_last(tmp_path):
    index = FaissCodeIndex(tmp_path)
    codes = random_codes(2)
    index.add(np.array([5, 5]), codes)
    assert index.count() == 1
    assert index.search(codes[1], 1) == [(5, 0)]


def test_rebuild_replaces_everything(make_index):
    index = make_index()
    index.add(np.arange(100), random_codes(100))
    fresh = random_codes(500, seed=2)
    batches = [(np.arange(1000, 1250), fresh[:250]), (np.arange(1250, 1500), fresh[250:])]
    index.rebuild(iter(batches))
    assert index.count() == 500
    assert index.search(fresh[300], 1) == [(1300, 0)]
    assert all(i >= 1000 for i, _ in index.search(random_codes(1, seed=3)[0], 50))
    index.persist()
    assert make_index().count() == 500


def test_compaction_keeps_results(make_index, monkeypatch):
    monkeypatch.setattr(faiss_index, "TAIL_MIN", 300)
    monkeypatch.setattr(faiss_index, "CLEAN_GRACE_S", 0)
    codes = random_codes(2000)
    index = make_index()
    for start in range(0, 2000, 250):
        index.add(np.arange(start, start + 250), codes[start : start + 250])
        index.persist()
    assert index.stats()["tail"] <= 300
    index.remove(range(0, 1200))  # more than a quarter tombstones → rewritten
    assert index.stats()["tombstones"] == 0
    assert index.count() == 800
    assert index.search(codes[1500], 1) == [(1500, 0)]
    index.persist()
    reopened = make_index()
    assert reopened.count() == 800
    assert reopened.search(codes[1999], 1) == [(1999, 0)]
    files = {p.name.split("-")[0] for p in (reopened.directory).iterdir()}
    assert files <= {"manifest.json", "seg", "delta"}
    assert len(list(reopened.directory.glob("seg-*"))) <= 2  # current + previous only


def test_search_batch_and_coarse_only(make_index):
    codes = clustered(5000, clusters=10)
    index = make_index()
    index.add(np.arange(5000), codes)
    queries = near(codes, np.array([1, 2, 3]), 0.05)
    assert index.search_batch(queries, 20) == [index.search(q, 20) for q in queries]
    coarse = index.search(queries[0], 20, coarse_only=True)
    truth64 = brute64(codes, queries[0])
    assert [d for _, d in coarse] == sorted(truth64.tolist())[:20]
    assert all(truth64[i] == d for i, d in coarse)


def test_wrong_code_length_is_refused(tmp_path):
    index = FaissCodeIndex(tmp_path)
    with pytest.raises(CodeLengthMismatch):
        index.add(np.arange(3), np.zeros((3, 16), dtype=np.uint8))
    with pytest.raises(CodeLengthMismatch):
        index.search(np.zeros(31, dtype=np.uint8), 5)
    with pytest.raises(CodeLengthMismatch):
        index.rebuild([(np.arange(2), np.zeros((2, 64), dtype=np.uint8))])
    with pytest.raises(ValueError):
        index.add(np.arange(2), np.zeros((3, 32), dtype=np.uint8))
    assert index.count() == 0


def test_corrupt_or_missing_files_start_empty_with_a_message(tmp_path, caplog):
    index = FaissCodeIndex(tmp_path)
    index.add(np.arange(10), random_codes(10))
    index.persist()
    (tmp_path / "manifest.json").write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="retrieval.search.faiss_index"):
        broken = FaissCodeIndex(tmp_path)
    assert broken.count() == 0
    assert "could not be read" in broken.stats()["load_error"]
    assert "could not be read" in caplog.text

    index.persist()  # a good manifest again, then a segment file goes missing
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / manifest["segment"] / "codes.npy").unlink()
    missing = FaissCodeIndex(tmp_path)
    assert missing.count() == 0 and missing.load_error

    index.persist()  # a truncated segment array
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / manifest["segment"] / "ids.npy").write_bytes(b"\x93NUMPY garbage")
    assert FaissCodeIndex(tmp_path).count() == 0


def test_another_process_persisting_is_picked_up(tmp_path):
    writer = FaissCodeIndex(tmp_path)
    reader = FaissCodeIndex(tmp_path)
    codes = random_codes(50)
    writer.add(np.arange(50), codes)
    assert reader.count() == 0  # not persisted yet
    writer.persist()
    assert reader.count() == 50
    assert reader.search(codes[7], 1) == [(7, 0)]
    writer.remove([7])
    writer.persist()
    assert reader.search(codes[7], 1)[0][0] != 7


def test_two_writers_of_one_folder_keep_each_others_codes(tmp_path):
    """Two indexing jobs (two worker processes) open the same folder: under the write
    lock the second reloads first, so neither persists over the other's codes."""
    codes = random_codes(40)
    first, second = FaissCodeIndex(tmp_path), FaissCodeIndex(tmp_path)
    second.add(np.arange(0, 5), codes[:5])  # an unsaved change from before the lock
    with first.writing():
        first.add(np.arange(0, 20), codes[:20])
        first.persist()
    with second.writing():
        assert second.count() == 20  # reloaded once the lock was held
        second.add(np.arange(20, 40), codes[20:])
        second.persist()
    reopened = FaissCodeIndex(tmp_path)
    assert reopened.count() == 40
    assert reopened.search(codes[3], 1) == [(3, 0)]
    assert reopened.load_error is None


def test_write_lock_is_exclusive(tmp_path):
    holder, other = FaissCodeIndex(tmp_path), FaissCodeIndex(tmp_path)
    waited = []

    def give_up():
        waited.append(1)
        raise RuntimeError("cancelled")

    with holder.writing():
        with pytest.raises(RuntimeError, match="cancelled"), other.writing(give_up):
            pass
    assert waited == [1]
    with other.writing(give_up):  # free again
        pass


def test_clean_keeps_files_another_writer_just_moved_into_place(tmp_path, monkeypatch):
    index = FaissCodeIndex(tmp_path)
    index.add(np.arange(10), random_codes(10))
    index.persist()
    (tmp_path / "seg-999-1").mkdir()  # another writer's new segment, manifest not yet written
    (tmp_path / "delta-999-1.npz").write_bytes(b"x")
    for round_ in range(3):
        index.add(np.arange(10 + round_, 11 + round_), random_codes(1, seed=round_))
        index.persist()
    assert (tmp_path / "seg-999-1").exists() and (tmp_path / "delta-999-1.npz").exists()
    monkeypatch.setattr(faiss_index, "CLEAN_GRACE_S", 0)
    index.persist()
    assert not (tmp_path / "seg-999-1").exists()


def test_concurrent_searches_while_adding(make_index):
    codes = random_codes(6000)
    index = make_index()
    index.add(np.arange(3000), codes[:3000])
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher():
        try:
            while not stop.is_set():
                for hit_id, dist in index.search(codes[5], 10):
                    assert 0 <= hit_id < 6000 and 0 <= dist <= 256
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for start in range(3000, 6000, 500):
        index.add(np.arange(start, start + 500), codes[start : start + 500])
        index.remove([start - 1])
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert index.count() == 6000 - 6


def test_hard_query_reranks_a_wider_shortlist(tmp_path, monkeypatch):
    """A query whose best matches are far on the 64 coarse bits gets the second, wider
    pass; its answers are still true distances in order."""
    codes = random_codes(20_000)
    index = FaissCodeIndex(tmp_path, mih_min=0, shortlist=200)
    index.add(np.arange(20_000), codes)
    index.compact()
    sizes: list[int] = []
    rank = faiss_index._rank

    def spy(s, code, pos, dist, size, k, coarse_only):
        sizes.append(size)
        return rank(s, code, pos, dist, size, k, coarse_only)

    monkeypatch.setattr(faiss_index, "_rank", spy)
    query = random_codes(1, seed=42)[0]  # unrelated to every code: all far on 64 bits
    hits = index.search(query, 10)
    assert sizes == [200, 200 * faiss_index.WIDE_FACTOR]
    truth = brute256(codes, query)
    assert all(truth[i] == d for i, d in hits)
    assert hits == sorted(hits, key=lambda hit: (hit[1], hit[0]))
    sizes.clear()
    assert index.search(codes[3], 1) == [(3, 0)]  # an easy query: one pass
    assert sizes == [200]
