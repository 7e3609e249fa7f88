"""ElasticHash: the hash-code index in an Elasticsearch / OpenSearch cluster (thesis 4.2.3).

The scale-out backend of :class:`retrieval.search.base.CodeIndex`. One search is one request:
the multi-index-hashing filter (terms lookups into the neighbour index ``nbs-d2``) selects the
codes with a 16-bit subcode within distance 2 of the query's, and the stored painless script
``hd64`` re-ranks them by the 256-bit Hamming distance (Listings 4.1–4.4; the bodies are built
in :mod:`retrieval.search.elastic_queries`).

Re-ranking where the script cannot run: ``rerank="client"`` keeps the coarse stage in the
cluster but fetches the candidates' four 64-bit words and ranks them here with numpy. That is
what osmem-server (the in-memory test server, whose painless subset lacks ``^`` and
``doc[params.field]``) and clusters with stored scripts disabled can serve. ``"server"`` (the
default, setting ``VIVA_ES_RERANK``) is ElasticHash as published.

Client: opensearch-py. It sends plain ``application/json``, which OpenSearch 1–3 and
Elasticsearch 7.10–8.x accept; the elasticsearch client's versioned media type is refused by
osmem-server and by clusters older than the client (docs/elastichash.md).

Reads and writes go through an alias; :meth:`ElasticCodeIndex.rebuild` fills a fresh index and
moves the alias atomically, so searches keep working while the archive is re-indexed. Any
transport failure becomes :class:`IndexUnavailable` with a message for users; the rest of the
application never depends on the cluster.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from opensearchpy import OpenSearch, helpers
from opensearchpy import exceptions as es_exc

from annotation.similarity import IndexNotBuilt, SimilarityError

from . import elastic_queries as q
from .base import IndexUnavailable, check_codes

log = logging.getLogger(__name__)

RERANK_MODES = ("server", "client")
Progress = Callable[[int, int], None]

#: HTTP statuses that mean "the cluster cannot serve right now", not "the request is wrong".
_UNAVAILABLE_STATUSES = {429, 502, 503, 504}


def public_url(url: str) -> str:
    """The URL without user:password, for messages and logs."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _settings(name: str, default: Any) -> Any:
    from django.conf import settings

    return getattr(settings, name, default)


class ElasticCodeIndex:
    """A :class:`~retrieval.search.base.CodeIndex` in an Elasticsearch/OpenSearch cluster.

    ``None`` arguments come from the settings ``VIVA_ES_URL``, ``VIVA_ES_INDEX`` (name of the
    first concrete index; rebuilds add a time stamp), ``VIVA_ES_ALIAS`` (what is read and
    written), ``VIVA_ES_NEIGHBOURS_INDEX``, ``VIVA_ES_TIMEOUT`` and ``VIVA_ES_RERANK``.

    ``knn=True`` additionally stores each code as an Elasticsearch 8.15+ ``bit`` dense vector
    and searches with the native (approximate, HNSW) kNN instead of the ElasticHash query.
    ``exhaustive_below``: when the coarse stage finds fewer than ``k`` codes and the index holds
    at most this many, every code is scored instead (cheap on small archives, where a radius-2
    ball often holds fewer than ``k`` images); 0 disables it.
    """

    def __init__(
        self,
        url: str | None = None,
        index: str | None = None,
        alias: str | None = None,
        neighbours_index: str | None = None,
        timeout: float | None = None,
        *,
        rerank: str | None = None,
        knn: bool = False,
        exhaustive_below: int = 20_000,
        chunk_size: int = 2_000,
        client: OpenSearch | None = None,
    ) -> None:
        self.url = url or _settings("VIVA_ES_URL", "http://127.0.0.1:9200")
        self.index = index or _settings("VIVA_ES_INDEX", "viva-codes")
        self.alias = alias or _settings("VIVA_ES_ALIAS", "viva-codes-current")
        self.neighbours_index = neighbours_index or _settings("VIVA_ES_NEIGHBOURS_INDEX", "nbs-d2")
        self.timeout = float(timeout if timeout is not None else _settings("VIVA_ES_TIMEOUT", 10))
        self.rerank = rerank or _settings("VIVA_ES_RERANK", "server")
        if self.rerank not in RERANK_MODES:
            raise ValueError(f"rerank must be one of {RERANK_MODES}, not {self.rerank!r}.")
        if self.index == self.alias:
            raise ValueError("The index and the alias need different names (VIVA_ES_INDEX/ALIAS).")
        self.knn = knn
        self.exhaustive_below = int(exhaustive_below)
        self.chunk_size = int(chunk_size)
        self.client = client or OpenSearch(
            hosts=[self.url], timeout=self.timeout, max_retries=1, retry_on_timeout=False
        )
        self._dirty = False  # written since the last refresh
        self._ready = False  # setup() checked/created everything once

    def __repr__(self) -> str:
        return f"ElasticCodeIndex({public_url(self.url)!r}, alias={self.alias!r})"

    # ------------------------------------------------------------------ errors

    def unavailable_message(self, reason: str) -> str:
        return (
            f"The Elasticsearch cluster at {public_url(self.url)} cannot be reached: {reason}; "
            "image similarity search is unavailable until it is back. "
            "Everything else keeps working."
        )

    @staticmethod
    def _reason(exc: Exception) -> str:
        if isinstance(exc, es_exc.ConnectionTimeout):
            return "no answer within the timeout (VIVA_ES_TIMEOUT)"
        text = str(getattr(exc, "info", None) or exc)
        lowered = text.lower()
        if "refused" in lowered:
            return "connection refused"
        if "name or service not known" in lowered or "nodename nor servname" in lowered:
            return "unknown host name"
        if "ssl" in lowered or "certificate" in lowered:
            return "TLS/certificate error"
        if isinstance(exc, es_exc.TransportError) and isinstance(exc.status_code, int):
            return f"HTTP {exc.status_code} {exc.error}"
        return text.splitlines()[0][:200] if text else type(exc).__name__

    @staticmethod
    def _error_type(exc: es_exc.TransportError) -> str:
        info = exc.info if isinstance(exc.info, dict) else {}
        err = info.get("error")
        if isinstance(err, dict):
            return str(err.get("type", ""))
        return str(exc.error or "")

    @staticmethod
    def _error_reason(exc: es_exc.TransportError) -> str:
        info = exc.info if isinstance(exc.info, dict) else {}
        err = info.get("error")
        if isinstance(err, dict):
            cause = err.get("root_cause") or [err.get("caused_by") or err]
            first = cause[0] if isinstance(cause, list) and cause else err
            return str(first.get("reason") or err.get("reason") or err.get("type"))
        return str(err or exc.error or exc)

    @staticmethod
    def _missing_index(exc: es_exc.TransportError) -> str:
        info = exc.info if isinstance(exc.info, dict) else {}
        err = info.get("error")
        return str(err.get("index", "")) if isinstance(err, dict) else ""

    def not_built_message(self, missing: str = "") -> str:
        where = f"the Elasticsearch cluster at {public_url(self.url)}"
        if missing == self.neighbours_index:
            what = f"The neighbour index {missing!r} of the similarity search is missing in {where}"
        else:
            what = f"The similarity index {self.alias!r} does not exist in {where} yet"
        return f"{what}. Run `python manage.py es_setup` and re-index the archive's hash codes."

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate client errors into the messages users read."""
        try:
            yield
        except (es_exc.ConnectionError, es_exc.ConnectionTimeout) as exc:
            raise IndexUnavailable(self.unavailable_message(self._reason(exc))) from exc
        except (es_exc.AuthenticationException, es_exc.AuthorizationException) as exc:
            raise IndexUnavailable(
                self.unavailable_message(
                    f"access refused (HTTP {exc.status_code}); check the user and password "
                    "in VIVA_ES_URL"
                )
            ) from exc
        except helpers.BulkIndexError as exc:
            first = exc.errors[0] if exc.errors else {}
            raise SimilarityError(f"Elasticsearch could not {action}: {first}") from exc
        except es_exc.TransportError as exc:
            if exc.status_code in _UNAVAILABLE_STATUSES or not isinstance(exc.status_code, int):
                raise IndexUnavailable(self.unavailable_message(self._reason(exc))) from exc
            kind = self._error_type(exc)
            if kind == "index_not_found_exception":
                raise IndexNotBuilt(self.not_built_message(self._missing_index(exc))) from exc
            if kind == "resource_not_found_exception" and q.SCRIPT_ID in str(exc.info):
                raise SimilarityError(
                    f"The re-ranking script {q.SCRIPT_ID!r} is missing in the cluster at "
                    f"{public_url(self.url)}; run `python manage.py es_setup`."
                ) from exc
            raise SimilarityError(
                f"Elasticsearch could not {action}: {self._error_reason(exc)}"
            ) from exc

    # ------------------------------------------------------------------ setup

    def ping(self) -> tuple[bool, str]:
        """``(True, "<distribution> <version> at <url>, N codes")`` or ``(False, message)``."""
        try:
            with self._errors("answer"):
                info = self.client.info()
                version = info.get("version", {})
                name = {"opensearch": "OpenSearch"}.get(
                    version.get("distribution"), "Elasticsearch"
                )
                text = f"{name} {version.get('number', '?')} at {public_url(self.url)}"
                if self.client.indices.exists_alias(name=self.alias):
                    text += f", {self.count()} codes in {self.alias!r}"
                else:
                    text += f", no index {self.alias!r} yet (run `manage.py es_setup`)"
                return True, text
        except SimilarityError as exc:
            return False, str(exc)

    def setup(self, progress: Progress | None = None, *, codes: bool = True) -> dict[str, str]:
        """Create what is missing: codes index + alias, neighbour index, stored script.

        Idempotent and cheap when everything exists; an interrupted neighbour index (fewer than
        65,536 documents) is completed. ``codes=False`` prepares only the parts every codes
        index shares (neighbour index, script). Returns what was done per part.
        """
        done = {"codes": self._ensure_codes_index() if codes else "skipped"}
        done["neighbours"] = self._ensure_neighbours(progress)
        done["script"] = self._ensure_script()
        self._ready = codes
        return done

    def _ensure_codes_index(self) -> str:
        with self._errors("create the codes index"):
            if self.client.indices.exists_alias(name=self.alias):
                return "exists"
            if self.client.indices.exists(index=self.alias):
                raise SimilarityError(
                    f"An index named {self.alias!r} exists where the alias should be (was it "
                    "written before `es_setup`?). Delete it or run `es_setup --recreate`."
                )
            if self.client.indices.exists(index=self.index):
                self.client.indices.put_alias(index=self.index, name=self.alias)
                return "alias added"
            body = q.codes_index_body(knn=self.knn)
            body["aliases"] = {self.alias: {}}
            self.client.indices.create(index=self.index, body=body)
            return "created"

    def _ensure_neighbours(self, progress: Progress | None) -> str:
        total = q.SUBCODE_VALUES
        with self._errors("build the neighbour index"):
            if self.client.indices.exists(index=self.neighbours_index):
                have = self.client.count(index=self.neighbours_index)["count"]
                if have >= total:
                    return "exists"
                state = "completed"
            else:
                self.client.indices.create(
                    index=self.neighbours_index, body=q.neighbours_index_body()
                )
                state = "created"
            step = max(self.chunk_size, 1)
            for start in range(0, total, step):
                stop = min(start + step, total)
                helpers.bulk(
                    self.client,
                    q.neighbour_actions(self.neighbours_index, start, stop),
                    chunk_size=step,
                    request_timeout=max(self.timeout, 60.0),
                )
                if progress:
                    progress(stop, total)
            self.client.indices.refresh(index=self.neighbours_index)
            return state

    def _ensure_script(self) -> str:
        if self.rerank != "server":
            return "not needed (rerank=client)"
        with self._errors("store the re-ranking script"):
            try:
                self.client.put_script(id=q.SCRIPT_ID, body=q.stored_script_body())
            except es_exc.RequestError as exc:
                raise SimilarityError(
                    f"The cluster at {public_url(self.url)} does not accept the stored painless "
                    f"script {q.SCRIPT_ID!r} ({self._error_reason(exc)}). Enable stored scripts, "
                    "or set VIVA_ES_RERANK=client to re-rank in VIVA instead."
                ) from exc
        return "stored"

    def _setup_once(self) -> None:
        if not self._ready:
            self.setup()

    def delete_all(self, *, neighbours: bool = False) -> list[str]:
        """Delete the codes indexes behind the alias and the first index (``es_setup
        --recreate``); the neighbour index too when asked — it never changes (Listing 4.2), so
        it is normally kept. The stored script stays: it is the same for every VIVA on the
        cluster and :meth:`setup` overwrites it anyway. Returns the deleted index names."""
        deleted: list[str] = []
        with self._errors("delete the indexes"):
            names = set(self._alias_targets()) | {self.index}
            if neighbours:
                names.add(self.neighbours_index)
            for name in sorted(names):
                if self.client.indices.exists(index=name):
                    self.client.indices.delete(index=name)
                    deleted.append(name)
        self._ready = False
        self._dirty = False
        return deleted

    def _delete_orphans(self) -> list[str]:
        """Delete ``<index>-<stamp>`` indexes no alias points to: left by a rebuild whose
        worker died before the switch (a failing rebuild cleans up after itself)."""
        live = set(self._alias_targets())
        found = self.client.indices.get(index=f"{self.index}-*", allow_no_indices=True)
        stamped = re.compile(re.escape(self.index) + r"-\d{8}-\d{6}-\d{6}")
        orphans = sorted(n for n in found if stamped.fullmatch(n) and n not in live)
        for name in orphans:
            self.client.indices.delete(index=name)
            log.info("deleted %s, left by an interrupted rebuild of %s", name, self.alias)
        return orphans

    def _alias_targets(self) -> list[str]:
        try:
            return sorted(self.client.indices.get_alias(name=self.alias))
        except es_exc.NotFoundError:
            return []

    # ------------------------------------------------------------------ CodeIndex

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        arr = check_codes(codes)
        id_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(id_arr) != len(arr):
            raise ValueError(f"{len(id_arr)} image ids for {len(arr)} codes.")
        if not len(arr):
            return
        self._setup_once()
        self._bulk(q.index_actions(self.alias, id_arr, arr, knn=self.knn), "index hash codes")

    def _bulk(self, actions: Iterable[dict], what: str, *, mark_dirty: bool = True) -> None:
        with self._errors(what):
            _, errors = helpers.bulk(
                self.client,
                actions,
                chunk_size=self.chunk_size,
                raise_on_error=False,
                request_timeout=max(self.timeout, 60.0),
            )
            if errors:
                raise SimilarityError(f"Elasticsearch could not {what}: {errors[0]}")
        if mark_dirty:
            self._dirty = True

    def remove(self, ids: Iterable[int]) -> int:
        id_list = [int(i) for i in ids]
        if not id_list:
            return 0
        with self._errors("remove hash codes"):
            if not self.client.indices.exists_alias(name=self.alias):
                return 0
            removed, errors = helpers.bulk(
                self.client,
                q.delete_actions(self.alias, id_list),
                chunk_size=self.chunk_size,
                raise_on_error=False,
            )
        real = [e for e in errors if e.get("delete", {}).get("status") != 404]
        if real:
            raise SimilarityError(f"Elasticsearch could not remove hash codes: {real[0]}")
        self._dirty = True
        return int(removed)

    def count(self) -> int:
        with self._errors("count the hash codes"):
            if not self.client.indices.exists_alias(name=self.alias):
                return 0
            self._refresh_if_dirty()
            return int(self.client.count(index=self.alias)["count"])

    def persist(self) -> None:
        """Refresh, so the codes written so far are searchable (the data is already durable)."""
        with self._errors("refresh the index"):
            if self.client.indices.exists_alias(name=self.alias):
                self.client.indices.refresh(index=self.alias)
        self._dirty = False

    def _refresh_if_dirty(self) -> None:
        if self._dirty:
            self.client.indices.refresh(index=self.alias)
            self._dirty = False

    def search(self, code: np.ndarray, k: int) -> list[tuple[int, int]]:
        query = check_codes(code, single=True)
        k = int(k)
        if k <= 0:
            return []
        with self._errors("search for similar images"):
            self._refresh_if_dirty()
            hits = self._search(query, k, exhaustive=False)
            if len(hits) < k and self.exhaustive_below > 0:
                total = int(self.client.count(index=self.alias)["count"])
                if len(hits) < total <= self.exhaustive_below:
                    hits = self._search(query, k, exhaustive=True)
        return hits

    def _search(self, query: np.ndarray, k: int, *, exhaustive: bool) -> list[tuple[int, int]]:
        if self.knn:
            return self._search_knn(query, k)
        if self.rerank == "server":
            return self._search_server(query, k, exhaustive=exhaustive)
        return self._search_client(query, k, exhaustive=exhaustive)

    def _search_server(
        self, query: np.ndarray, k: int, *, exhaustive: bool
    ) -> list[tuple[int, int]]:
        body = q.search_body(query, k, self.neighbours_index, exhaustive=exhaustive)
        response = self.client.search(index=self.alias, body=body)
        return [
            (int(hit["_id"]), q.score_to_distance(hit["sort"][0]))
            for hit in response["hits"]["hits"]
        ]

    def _search_client(
        self, query: np.ndarray, k: int, *, exhaustive: bool, page_size: int = 5_000
    ) -> list[tuple[int, int]]:
        ids: list[int] = []
        words: list[list[int]] = []
        after: list | None = None
        while True:
            body = q.candidates_body(
                query, self.neighbours_index, page_size, search_after=after, exhaustive=exhaustive
            )
            hits = self.client.search(index=self.alias, body=body)["hits"]["hits"]
            for hit in hits:
                src = hit["_source"]
                ids.append(int(src[q.ID_FIELD]))
                words.append([int(src[name]) for name in q.R_FIELDS])
            if len(hits) < page_size:
                break
            after = hits[-1]["sort"]
        if not ids:
            return []
        _, query_words = q.split_codes(query[None, :])
        id_arr = np.asarray(ids, dtype=np.int64)
        dist = q.word_distances(query_words[0], np.asarray(words, dtype=np.int64))
        order = np.lexsort((id_arr, dist))[:k]
        return [(int(id_arr[i]), int(dist[i])) for i in order]

    def _search_knn(self, query: np.ndarray, k: int) -> list[tuple[int, int]]:
        body = q.knn_body(query, k, num_candidates=max(10 * k, 100))
        response = self.client.search(index=self.alias, body=body)
        pairs = [
            (int(hit["_id"]), q.knn_score_to_distance(hit["_score"]))
            for hit in response["hits"]["hits"]
        ]
        return sorted(pairs, key=lambda pair: (pair[1], pair[0]))[:k]

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Index the batches into a fresh index, then point the alias at it in one atomic
        ``_aliases`` call and delete the old index: searches see the old codes until the new
        index is complete. A failed rebuild deletes its half-filled index."""
        with self._errors("prepare the rebuild"):
            self._ensure_neighbours(None)
            self._ensure_script()
            if not self.client.indices.exists_alias(name=self.alias) and (
                self.client.indices.exists(index=self.alias)
            ):
                raise SimilarityError(
                    f"An index named {self.alias!r} exists where the alias should be; "
                    "run `es_setup --recreate`."
                )
            self._delete_orphans()
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
            new = f"{self.index}-{stamp}"
            self.client.indices.create(index=new, body=q.codes_index_body(knn=self.knn))
        try:
            n = 0
            for ids, codes in batches:
                arr = check_codes(codes)
                id_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
                if len(id_arr) != len(arr):
                    raise ValueError(f"{len(id_arr)} image ids for {len(arr)} codes.")
                actions = q.index_actions(new, id_arr, arr, knn=self.knn)
                self._bulk(actions, "index hash codes", mark_dirty=False)
                n += len(arr)
            with self._errors("switch to the rebuilt index"):
                self.client.indices.refresh(index=new)
                old = self._alias_targets()
                moves: list[dict] = [
                    {"remove": {"index": name, "alias": self.alias}} for name in old
                ]
                moves.append({"add": {"index": new, "alias": self.alias}})
                self.client.indices.update_aliases(body={"actions": moves})
        except BaseException:
            try:
                self.client.indices.delete(index=new)
            except es_exc.OpenSearchException:
                log.warning("could not delete the half-built index %s", new)
            raise
        with self._errors("delete the previous index"):
            for name in old:
                if name != new:
                    self.client.indices.delete(index=name)
        self._dirty = False
        self._ready = True
        log.info("rebuilt %s: %d codes in %s (was %s)", self.alias, n, new, old)
