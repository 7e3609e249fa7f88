"""ElasticHash backend (issue 6): request bodies as data, the backend against osmem-server,
the full server-side query against a real cluster when ``VIVA_TEST_ES_URL`` is set.

osmem-server (an in-memory OpenSearch-compatible server) runs mapping, bulk, aliases and the
terms-lookup filter, but not stored scripts nor ``^`` in painless; so against it the backend
runs with ``rerank="client"`` (coarse stage in the cluster, re-ranking here) and the query of
Listing 4.4 is checked as data. Building the 65,536-document neighbour index in osmem takes
tens of seconds on a busy 2-core machine: it is built once per session on the base server,
and every test works on a copy-on-write clone of it.
"""

from __future__ import annotations

import io
import os
import socket
import time
import uuid
from itertools import pairwise

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from annotation.similarity import IndexNotBuilt, SimilarityError
from retrieval.search import elastic_queries as q
from retrieval.search.base import CodeIndex, CodeLengthMismatch, IndexUnavailable
from retrieval.search.elastic import ElasticCodeIndex, public_url

INDEX, ALIAS, NBS = "viva-test-codes", "viva-test-current", "viva-test-nbs-d2"


# --------------------------------------------------------------------------- helpers


def hamming(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(codes, query), axis=1).sum(axis=1).astype(np.int64)


def exact_top_k(query, ids, codes, k) -> list[tuple[int, int]]:
    """Exhaustive reference: nearest first, ties by id."""
    dist = hamming(query, codes)
    order = np.lexsort((ids, dist))[:k]
    return [(int(ids[i]), int(dist[i])) for i in order]


def clustered_codes(n_centres: int, per_centre: int, flip: float, seed: int = 0):
    """Codes around random centres, each bit flipped with probability ``flip``."""
    rng = np.random.default_rng(seed)
    centres = np.unpackbits(rng.integers(0, 256, (n_centres, 32), dtype=np.uint8), axis=1)
    bits = np.repeat(centres, per_centre, axis=0)
    bits ^= (rng.random(bits.shape) < flip).astype(np.uint8)
    codes = np.packbits(bits, axis=1)
    ids = np.arange(1000, 1000 + len(codes), dtype=np.int64)
    return ids, codes


def closed_port_url(user: str = "") -> str:
    """A local URL nobody listens on (bound and released: no network, instant refusal)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://{user}127.0.0.1:{port}"


def popcount16(values: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(values, dtype=np.uint16))


# --------------------------------------------------------------------------- bodies as data


def test_subcode_masks_are_the_137_flips_within_radius_2():
    masks = q.subcode_masks()
    assert len(masks) == 137 == 1 + 16 + 120
    assert masks[0] == 0
    assert len(set(masks.tolist())) == 137
    assert popcount16(masks).max() == 2


@pytest.mark.parametrize("subcode", [0, 1, 0x8000, 0xA5C3, 0xFFFF])
def test_neighbours_are_exactly_the_values_within_distance_2(subcode):
    nbs = q.neighbours(subcode)
    assert len(nbs) == 137 and len(set(nbs)) == 137
    assert nbs[0] == subcode
    everything = np.arange(q.SUBCODE_VALUES)
    expected = set(everything[popcount16(everything ^ subcode) <= 2].tolist())
    assert set(nbs) == expected
    assert all(0 <= v < 65536 for v in nbs)


def test_neighbours_refuse_values_outside_16_bits():
    with pytest.raises(ValueError):
        q.neighbours(65536)


def test_code_layout_subcodes_and_signed_words():
    code = np.arange(32, dtype=np.uint8)
    code[0] = 0xFF  # sets the sign bit of r_0
    subcodes, words = q.split_codes(code[None, :])
    raw = bytes(code)
    assert subcodes[0].tolist() == [int.from_bytes(raw[2 * i : 2 * i + 2], "big") for i in range(4)]
    assert words[0].tolist() == [
        int.from_bytes(raw[8 * i : 8 * i + 8], "big", signed=True) for i in range(4)
    ]
    assert words[0, 0] < 0  # two's complement, as ElasticHash's binstr2int
    # r_0 holds the same 64 bits as f_0..f_3.
    assert (int(words[0, 0]) & 0xFFFFFFFFFFFFFFFF) >> 48 == subcodes[0, 0]
    np.testing.assert_array_equal(q.join_words(words), code[None, :])


def test_word_distances_match_bit_counting():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    _, words = q.split_codes(codes)
    d = q.word_distances(words[3], words)
    np.testing.assert_array_equal(d, hamming(codes[3], codes))
    assert d[3] == 0


def test_codes_mapping_is_listing_4_1():
    body = q.codes_index_body()
    assert body == {
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "image_id": {"type": "long"},
                "f_0": {"type": "keyword"},
                "f_1": {"type": "keyword"},
                "f_2": {"type": "keyword"},
                "f_3": {"type": "keyword"},
                "r_0": {"type": "long"},
                "r_1": {"type": "long"},
                "r_2": {"type": "long"},
                "r_3": {"type": "long"},
            },
        }
    }
    assert q.codes_index_body(shards=5)["settings"] == {"number_of_shards": 5}


def test_neighbour_index_and_its_documents():
    assert q.neighbours_index_body() == {
        "mappings": {
            "properties": {"nbs": {"type": "keyword", "index": False, "doc_values": False}}
        }
    }
    actions = list(q.neighbour_actions("nbs-d2", 100, 103))
    assert [a["_id"] for a in actions] == ["100", "101", "102"]
    assert actions[0]["_index"] == "nbs-d2" and actions[0]["_op_type"] == "index"
    assert actions[1]["_source"] == {"nbs": q.neighbours(101)}
    assert sum(1 for _ in q.neighbour_actions("x")) == 65536


def test_stored_script_is_listing_4_3():
    assert q.SCRIPT_ID == "hd64"
    assert q.stored_script_body() == {
        "script": {
            "lang": "painless",
            "source": "64-Long.bitCount(params.subcode^doc[params.field].value)",
        }
    }


def test_search_body_is_listing_4_4():
    rng = np.random.default_rng(2)
    code = rng.integers(0, 256, 32, dtype=np.uint8)
    subcodes, words = q.split_codes(code[None, :])
    body = q.search_body(code, 25, "nbs-d2")
    functions = [
        {
            "script_score": {
                "script": {
                    "id": "hd64",
                    "params": {"field": f"r_{i}", "subcode": int(words[0, i])},
                }
            },
            "weight": 1,
        }
        for i in range(4)
    ]
    should = [
        {"terms": {f"f_{j}": {"id": str(int(subcodes[0, j])), "index": "nbs-d2", "path": "nbs"}}}
        for j in range(4)
    ]
    assert body["query"] == {
        "function_score": {
            "boost_mode": "sum",
            "score_mode": "sum",
            "functions": functions,
            "query": {
                "constant_score": {
                    "boost": 0.0,
                    "filter": {"bool": {"minimum_should_match": 1, "should": should}},
                }
            },
        }
    }
    assert body["size"] == 25 and body["_source"] is False
    assert body["sort"] == [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}}]
    # Four terms lookups of 137 neighbours each: 548 subcodes, Hamming radius ≤ 11 on 64 bits.
    assert sum(len(q.neighbours(int(s))) for s in subcodes[0]) == 548


def test_exhaustive_and_candidate_bodies():
    code = np.zeros(32, dtype=np.uint8)
    assert q.search_body(code, 5, "n", exhaustive=True)["query"]["function_score"]["query"] == {
        "match_all": {}
    }
    page = q.candidates_body(code, "n", 100, search_after=[41])
    assert page["query"] == q.coarse_filter(code, "n")
    assert page["_source"] == ["image_id", "r_0", "r_1", "r_2", "r_3"]
    assert page["sort"] == [{"image_id": {"order": "asc"}}] and page["search_after"] == [41]
    assert "search_after" not in q.candidates_body(code, "n", 100)


def test_documents_and_bulk_actions():
    codes = np.zeros((2, 32), dtype=np.uint8)
    codes[1, :2] = [0x01, 0x02]
    codes[1, 8] = 0x80
    actions = list(q.index_actions("viva-codes-current", np.array([7, 9]), codes))
    assert [a["_id"] for a in actions] == ["7", "9"]
    assert {a["_op_type"] for a in actions} == {"index"}
    assert actions[1]["_source"] == {
        "image_id": 9,
        "f_0": "258",
        "f_1": "0",
        "f_2": "0",
        "f_3": "0",
        "r_0": 0x0102 << 48,
        "r_1": -(2**63),
        "r_2": 0,
        "r_3": 0,
    }
    assert list(q.delete_actions("a", [3])) == [{"_op_type": "delete", "_index": "a", "_id": "3"}]
    with pytest.raises(ValueError):
        q.code_documents(np.array([1, 2, 3]), codes)


def test_knn_mode_bodies():
    mapping = q.codes_index_body(knn=True)["mappings"]["properties"]["code_bits"]
    assert mapping == {
        "type": "dense_vector",
        "element_type": "bit",
        "dims": 256,
        "index": True,
        "similarity": "l2_norm",
    }
    code = np.arange(32, dtype=np.uint8)
    doc = q.code_documents(np.array([5]), code[None, :], knn=True)[0]
    assert doc["code_bits"] == bytes(code).hex() and len(doc["code_bits"]) == 64
    body = q.knn_body(code, 10, num_candidates=5)
    assert body["knn"] == {
        "field": "code_bits",
        "query_vector": bytes(code).hex(),
        "k": 10,
        "num_candidates": 10,
    }


def test_score_conversions():
    assert q.score_to_distance(256.0) == 0
    assert q.score_to_distance(200.0) == 56
    assert q.knn_score_to_distance(1.0) == 0
    assert q.knn_score_to_distance((256 - 40) / 256) == 40


# --------------------------------------------------------------------------- no cluster needed


def test_satisfies_the_code_index_protocol():
    index = ElasticCodeIndex(closed_port_url(), INDEX, ALIAS, NBS, 1)
    assert isinstance(index, CodeIndex)


def test_options_are_validated():
    with pytest.raises(ValueError, match="rerank"):
        ElasticCodeIndex(closed_port_url(), INDEX, ALIAS, NBS, 1, rerank="gpu")
    with pytest.raises(ValueError, match="different names"):
        ElasticCodeIndex(closed_port_url(), "same", "same", NBS, 1)


def test_settings_are_the_defaults(settings):
    settings.VIVA_ES_URL = "http://es.example:9200"
    settings.VIVA_ES_INDEX, settings.VIVA_ES_ALIAS = "a-idx", "a-alias"
    settings.VIVA_ES_NEIGHBOURS_INDEX, settings.VIVA_ES_TIMEOUT = "a-nbs", 3.5
    index = ElasticCodeIndex()
    assert (index.url, index.index, index.alias) == ("http://es.example:9200", "a-idx", "a-alias")
    assert (index.neighbours_index, index.timeout, index.rerank) == ("a-nbs", 3.5, "server")


def test_mismatched_code_lengths_are_refused_before_any_request():
    index = ElasticCodeIndex(closed_port_url(), INDEX, ALIAS, NBS, 1)
    with pytest.raises(CodeLengthMismatch, match="256 bits"):
        index.add(np.array([1, 2]), np.zeros((2, 16), dtype=np.uint8))
    with pytest.raises(CodeLengthMismatch, match="256 bits"):
        index.search(np.zeros(31, dtype=np.uint8), 10)


def test_unreachable_cluster_gives_a_clear_error_quickly():
    url = closed_port_url("viva:secret@")
    index = ElasticCodeIndex(url, INDEX, ALIAS, NBS, 2)
    code = np.zeros(32, dtype=np.uint8)
    started = time.monotonic()
    calls = [
        lambda: index.search(code, 10),
        lambda: index.add(np.array([1]), code[None, :]),
        lambda: index.count(),
        lambda: index.remove([1]),
        lambda: index.persist(),
        lambda: index.setup(),
        lambda: index.rebuild([]),
    ]
    for call in calls:
        with pytest.raises(IndexUnavailable) as err:
            call()
        message = str(err.value)
        assert "cannot be reached: connection refused" in message
        assert "Everything else keeps working" in message
        assert "secret" not in message and public_url(url) in message
    ok, message = index.ping()
    assert not ok and "cannot be reached" in message
    assert time.monotonic() - started < 10


@pytest.mark.django_db
def test_es_setup_command_reports_an_unreachable_cluster():
    with pytest.raises(CommandError, match="cannot be reached"):
        call_command("es_setup", url=closed_port_url(), stdout=io.StringIO())


def hashing_version(number: int, *, active: bool):
    from training.models import ModelVersion

    return ModelVersion.objects.create(
        kind=ModelVersion.Kind.HASHING,
        version=number,
        directory=f"hashing/{number}",
        weights_path=f"hashing/{number}/weights.pt",
        config={"method": "itq", "bits": 256},
        is_active=active,
    )


@pytest.mark.django_db
def test_es_setup_command_picks_the_codes_index_of_a_hashing_model():
    from retrieval.management.commands.es_setup import Command
    from retrieval.search.backends import es_names

    options = {"index": None, "alias": None, "model_version": None}
    assert Command()._names(options) == ((None, None), None)  # no model: shared parts only
    old = hashing_version(1, active=False)
    active = hashing_version(2, active=True)
    assert Command()._names(options) == (es_names(active), "hashing model v2")
    assert Command()._names({**options, "model_version": old.pk})[0] == es_names(old)
    with pytest.raises(CommandError, match="no hashing model version"):
        Command()._names({**options, "model_version": 999})
    named = {**options, "index": "i", "alias": "a"}
    assert Command()._names(named) == (("i", "a"), "as given")


# --------------------------------------------------------------------------- osmem-server


@pytest.fixture(scope="session")
def es_base():
    """One osmem-server per session; its base cluster gets the neighbour index once."""
    osmem = pytest.importorskip("osmem_server")
    server = osmem.OsmemServer.start(japanese=False)
    try:
        ElasticCodeIndex(server.url, INDEX, ALIAS, NBS, 30, rerank="client").setup()
        yield server
    finally:
        server.close()


@pytest.fixture
def es_url(es_base):
    """A copy-on-write clone of the base (codes index, alias, neighbour index) per test."""
    clone = es_base.clone()
    yield clone.url
    clone.close()


def osmem_index(url: str, **options) -> ElasticCodeIndex:
    return ElasticCodeIndex(url, INDEX, ALIAS, NBS, 10, rerank="client", **options)


@pytest.mark.slow
def test_setup_creates_mapping_alias_and_neighbour_index(es_url):
    index = osmem_index(es_url)
    client = index.client
    assert index.setup() == {
        "codes": "exists",
        "neighbours": "exists",
        "script": "not needed (rerank=client)",
    }
    assert client.indices.get_mapping(index=INDEX)[INDEX] == q.codes_index_body()
    assert list(client.indices.get_alias(name=ALIAS)) == [INDEX]
    assert client.count(index=NBS)["count"] == 65536
    assert client.get(index=NBS, id="40000")["_source"] == {"nbs": q.neighbours(40000)}
    other = ElasticCodeIndex(es_url, "other-codes", "other-current", NBS, 10, rerank="client")
    assert other.setup()["codes"] == "created"
    assert other.count() == 0


@pytest.mark.slow
def test_add_count_replace_and_remove(es_url):
    index = osmem_index(es_url)
    ids, codes = clustered_codes(4, 5, 0.05)
    index.add(ids, codes)
    assert index.count() == 20
    index.add(ids[:3], codes[10:13])  # same ids again: replaced, not duplicated
    assert index.count() == 20
    # ids[0] now holds codes[10] too: a tie at distance 0, ordered by id.
    assert index.search(codes[10], 2) == [(int(ids[0]), 0), (int(ids[10]), 0)]
    assert index.remove([int(ids[0]), int(ids[1]), 999_999]) == 2
    assert index.remove([int(ids[0])]) == 0
    assert index.count() == 18
    index.persist()
    # A second process (another instance) sees the same codes.
    assert osmem_index(es_url).count() == 18


@pytest.mark.slow
def test_terms_lookup_filter_returns_codes_with_a_subcode_within_distance_2(es_url):
    index = osmem_index(es_url)
    rng = np.random.default_rng(3)
    query = rng.integers(0, 256, 32, dtype=np.uint8)
    codes = rng.integers(0, 256, (60, 32), dtype=np.uint8)
    # Plant codes whose subcode i is the query's with 0, 1, 2 or 3 bits flipped.
    for row in range(40):
        sub, flips = row % 4, row // 4 % 4
        value = int.from_bytes(bytes(query[2 * sub : 2 * sub + 2]), "big")
        for bit in rng.choice(16, size=flips, replace=False):
            value ^= 1 << int(bit)
        codes[row, 2 * sub : 2 * sub + 2] = list(value.to_bytes(2, "big"))
    ids = np.arange(len(codes), dtype=np.int64) + 1
    index.add(ids, codes)
    index.persist()
    body = {"size": 100, "_source": False, "query": q.coarse_filter(query, NBS)}
    found = {int(h["_id"]) for h in index.client.search(index=ALIAS, body=body)["hits"]["hits"]}
    subcodes, _ = q.split_codes(codes)
    query_sub, _ = q.split_codes(query[None, :])
    near = (popcount16(subcodes ^ query_sub) <= 2).any(axis=1)
    assert found == set(ids[near].tolist())
    assert 20 <= len(found) < 60  # the planted 0–2-bit rows, not the 3-bit ones


@pytest.mark.slow
def test_client_rerank_finds_the_true_nearest_codes(es_url):
    index = osmem_index(es_url, exhaustive_below=0)  # coarse stage + re-ranking only
    ids, codes = clustered_codes(30, 8, 0.03, seed=4)
    index.add(ids, codes)
    for row in (0, 17, 101, 239):
        result = index.search(codes[row], 8)
        assert result == exact_top_k(codes[row], ids, codes, 8)
        assert result[0] == (int(ids[row]), 0)
        assert all(a[1] <= b[1] for a, b in pairwise(result))
    # A perturbed query (5 % of the bits flipped) still finds its cluster.
    noisy = np.packbits(np.unpackbits(codes[50]) ^ (np.random.default_rng(5).random(256) < 0.05))
    assert index.search(noisy, 8) == exact_top_k(noisy, ids, codes, 8)


@pytest.mark.slow
def test_small_index_is_scored_exhaustively_when_the_ball_is_too_small(es_url):
    ids, codes = clustered_codes(10, 3, 0.03, seed=6)
    far = np.random.default_rng(7).integers(0, 256, 32, dtype=np.uint8)
    strict = osmem_index(es_url, exhaustive_below=0)
    strict.add(ids, codes)
    coarse_only = strict.search(far, 5)
    assert len(coarse_only) < 5  # nothing within radius 2 of any subcode
    assert osmem_index(es_url).search(far, 5) == exact_top_k(far, ids, codes, 5)


@pytest.mark.slow
def test_search_before_setup_says_what_to_do(es_url):
    index = ElasticCodeIndex(es_url, "missing", "missing-current", NBS, 10, rerank="client")
    assert index.count() == 0
    assert index.remove([1]) == 0
    with pytest.raises(IndexNotBuilt, match="es_setup"):
        index.search(np.zeros(32, dtype=np.uint8), 5)
    ok, message = index.ping()
    assert ok and "OpenSearch" in message and "no index 'missing-current'" in message
    no_table = ElasticCodeIndex(es_url, INDEX, ALIAS, "no-such-nbs", 10, rerank="client")
    no_table.client.index(index=ALIAS, id="1", body=q.code_documents([1], np.zeros((1, 32)))[0])
    with pytest.raises(IndexNotBuilt, match="neighbour index 'no-such-nbs'"):
        no_table.search(np.zeros(32, dtype=np.uint8), 5)


@pytest.mark.slow
def test_rebuild_moves_the_alias_atomically(es_url):
    index = osmem_index(es_url)
    old_ids, old_codes = clustered_codes(5, 4, 0.03, seed=8)
    index.add(old_ids, old_codes)
    new_ids, new_codes = clustered_codes(6, 5, 0.03, seed=9)
    new_ids = new_ids + 10_000
    seen_during_rebuild = []

    def batches():
        yield new_ids[:15], new_codes[:15]
        # Half-way: searches still read the complete old index.
        seen_during_rebuild.append(index.search(old_codes[0], 1))
        seen_during_rebuild.append(index.count())
        yield new_ids[15:], new_codes[15:]

    index.rebuild(batches())
    assert seen_during_rebuild == [[(int(old_ids[0]), 0)], 20]
    targets = list(index.client.indices.get_alias(name=ALIAS))
    assert len(targets) == 1 and targets[0].startswith(INDEX + "-")
    assert not index.client.indices.exists(index=INDEX)  # the old index is gone
    assert index.count() == 30
    assert index.search(new_codes[7], 5) == exact_top_k(new_codes[7], new_ids, new_codes, 5)


@pytest.mark.slow
def test_failed_rebuild_keeps_the_old_index(es_url):
    index = osmem_index(es_url)
    ids, codes = clustered_codes(3, 4, 0.03, seed=10)
    index.add(ids, codes)
    before = set(index.client.indices.get(index="*"))

    def batches():
        yield ids, codes
        yield ids[:1], np.zeros((1, 8), dtype=np.uint8)  # a 64-bit code: refused

    with pytest.raises(CodeLengthMismatch):
        index.rebuild(batches())
    assert set(index.client.indices.get(index="*")) == before
    assert list(index.client.indices.get_alias(name=ALIAS)) == [INDEX]
    assert index.count() == 12
    # A rebuild whose worker died left an index behind: the next rebuild removes it.
    index.client.indices.create(index=f"{INDEX}-20000101-000000-000000")
    index.rebuild([(ids, codes)])
    assert set(index.client.indices.get(index=f"{INDEX}*")) == set(
        index.client.indices.get_alias(name=ALIAS)
    )
    assert index.count() == 12


@pytest.mark.slow
def test_server_rerank_needs_stored_scripts(es_url):
    """osmem-server has no stored scripts: setup says so and names the way out."""
    index = ElasticCodeIndex(es_url, INDEX, ALIAS, NBS, 10, rerank="server")
    with pytest.raises(SimilarityError, match="VIVA_ES_RERANK=client"):
        index.setup()
    index.client.index(index=ALIAS, id="1", body=q.code_documents([1], np.zeros((1, 32)))[0])
    with pytest.raises(SimilarityError, match="hd64"):
        index.search(np.zeros(32, dtype=np.uint8), 3)


@pytest.mark.slow
def test_es_setup_command(es_url, monkeypatch):
    common = dict(url=es_url, index=INDEX, alias=ALIAS, neighbours_index=NBS, rerank="client")
    out = io.StringIO()
    call_command("es_setup", check=True, stdout=out, **common)
    assert "OpenSearch" in out.getvalue()
    index = osmem_index(es_url)
    ids, codes = clustered_codes(2, 3, 0.03)
    index.add(ids, codes)

    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    with pytest.raises(CommandError, match="Nothing deleted"):
        call_command("es_setup", recreate=True, stdout=io.StringIO(), **common)
    assert index.count() == 6

    out = io.StringIO()
    call_command("es_setup", recreate=True, interactive=False, stdout=out, **common)
    text = out.getvalue()
    assert "deleted: viva-test-codes (6 codes)" in text
    assert "codes: created" in text and "neighbours: exists" in text and "ready" in text
    assert osmem_index(es_url).count() == 0


@pytest.mark.slow
@pytest.mark.django_db
def test_es_setup_without_a_hashing_model_prepares_the_shared_parts(es_url):
    out = io.StringIO()
    call_command("es_setup", url=es_url, neighbours_index=NBS, rerank="client", stdout=out)
    text = out.getvalue()
    assert "shared neighbour index and script only" in text
    assert "codes: skipped" in text and "neighbours: exists" in text
    with pytest.raises(CommandError, match="--recreate needs a codes index"):
        call_command("es_setup", url=es_url, recreate=True, interactive=False, stdout=out)


# --------------------------------------------------------------------------- real cluster


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("VIVA_TEST_ES_URL"),
    reason="set VIVA_TEST_ES_URL to an Elasticsearch/OpenSearch cluster to run the full query",
)
def test_full_elastichash_query_on_a_real_cluster():
    """Listing 4.4 with the stored script, server-side; uses and then deletes its own indexes."""
    suffix = uuid.uuid4().hex[:8]
    index = ElasticCodeIndex(
        os.environ["VIVA_TEST_ES_URL"],
        f"viva-test-{suffix}",
        f"viva-test-{suffix}-current",
        f"viva-test-{suffix}-nbs-d2",
        60,
        rerank="server",
        exhaustive_below=0,
    )
    try:
        assert index.setup()["script"] == "stored"
        ids, codes = clustered_codes(40, 8, 0.03, seed=11)
        index.add(ids, codes)
        index.persist()
        client_side = ElasticCodeIndex(
            index.url, index.index, index.alias, index.neighbours_index, 60, rerank="client"
        )
        for row in (0, 99, 250):
            expected = exact_top_k(codes[row], ids, codes, 8)
            assert index.search(codes[row], 8) == expected
            assert client_side.search(codes[row], 8) == expected
    finally:
        index.delete_all(neighbours=True)  # its own indexes; the shared script stays
