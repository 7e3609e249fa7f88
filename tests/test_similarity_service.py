"""Similarity search service and indexing (issue 6, items 3–4): queries by image and by
id, merging, exclusion, the keyframe filter, chunked resumable indexing, rebuilding the
backend from stored codes, the new-images signal, and a backend that is down.

Most tests use a small deterministic encoder (4-bit grey levels of an 8×8 grid = 256 bits)
and an exhaustive in-memory index, so the expected neighbours are known exactly; the last
tests run the real pieces (ITQ codes of a tiny random CNN, the FAISS index).
Also the fixtures of ``tests/test_similarity_pages.py`` and the browser test.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from PIL import Image as PILImage

from annotation import similarity
from retrieval.hashing.encoder import _cache as encoder_cache
from retrieval.models import HashCode
from retrieval.search import backends, indexing, service
from retrieval.search.base import IndexUnavailable, check_codes
from tests.test_grid_views import make_keyframes, make_stills, picture
from tests.test_similarity_elastic import es_base, es_url  # noqa: F401 - fixtures
from training.models import ModelVersion
from viva.jobs import JobCancelled
from viva.media import media_path
from viva.models import Image, Job

pytestmark = pytest.mark.django_db


# --------------------------------------------------------------------------- fakes


class FakeEncoder:
    """Deterministic codes: the grey level (4 bits) of each cell of an 8×8 grid."""

    batch_size = 4

    def __init__(self, version):
        self.version = version
        self.calls = 0

    @staticmethod
    def code(picture: PILImage.Image) -> np.ndarray:
        grey = np.asarray(picture.convert("L").resize((8, 8), PILImage.Resampling.BOX))
        levels = (grey // 16).astype(np.uint8).reshape(-1, 1)  # 64 cells × 4 bits
        return np.packbits(np.unpackbits(levels, axis=1)[:, 4:].reshape(-1))

    def encode_images(self, images) -> np.ndarray:
        self.calls += 1
        return np.stack([self.code(i) for i in images])

    def encode_bytes(self, contents) -> np.ndarray:
        import io

        self.calls += 1
        return np.stack([self.code(PILImage.open(io.BytesIO(c))) for c in contents])

    def encode_paths(self, paths):
        self.calls += 1
        codes = np.zeros((len(paths), 32), dtype=np.uint8)
        ok = np.zeros(len(paths), dtype=bool)
        for n, path in enumerate(paths):
            try:
                with PILImage.open(path) as img:
                    codes[n] = self.code(img)
                ok[n] = True
            except Exception:  # noqa: BLE001 - unreadable: ok stays False
                continue
        return codes, ok


class FakeIndex:
    """Exhaustive Hamming search over a dict; ``down`` simulates an unreachable server."""

    def __init__(self):
        self.codes: dict[int, np.ndarray] = {}
        self.down = False
        self.persisted = 0
        self.rebuilt = 0

    def _check(self):
        if self.down:
            raise ConnectionError("Connection refused")

    def add(self, ids, codes):
        self._check()
        for i, c in zip(np.asarray(ids), check_codes(codes), strict=True):
            self.codes[int(i)] = c.copy()

    def remove(self, ids: Iterable[int]) -> int:
        return sum(self.codes.pop(int(i), None) is not None for i in ids)

    def search(self, code, k):
        self._check()
        code = check_codes(code, single=True)
        dist = [
            (i, int(np.unpackbits(np.bitwise_xor(c, code)).sum())) for i, c in self.codes.items()
        ]
        return sorted(dist, key=lambda p: (p[1], p[0]))[:k]

    def search_batch(self, codes, k):
        return [self.search(c, k) for c in check_codes(codes)]

    def count(self):
        self._check()
        return len(self.codes)

    def live_ids(self):
        return np.array(sorted(self.codes), dtype=np.int64)

    def persist(self):
        self.persisted += 1

    def rebuild(self, batches):
        self.codes.clear()
        self.rebuilt += 1
        for ids, codes in batches:
            self.add(ids, codes)


@pytest.fixture
def fake_index(monkeypatch):
    """Every version's index is one shared FakeIndex (like a server backend)."""
    index = FakeIndex()
    monkeypatch.setattr(backends, "_open", lambda version, name: index)
    backends.forget()
    yield index
    backends.forget()


def make_version(number: int = 1, active: bool = True) -> ModelVersion:
    return ModelVersion.objects.create(
        kind=ModelVersion.Kind.HASHING,
        version=number,
        directory=f"hashing/{number}",
        weights_path=f"hashing/{number}/weights.pt",
        config={"bits": 256, "method": "test"},
        is_active=active,
    )


@pytest.fixture
def fake_model(fake_index):
    """An active hashing version whose encoder is the FakeEncoder."""
    version = make_version()
    service.forget_encoders()
    encoder_cache[(version.pk, "")] = FakeEncoder(version)
    yield version
    service.forget_encoders()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VIVA_INDEX_DIR = tmp_path / "index"
    return tmp_path


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


# --------------------------------------------------------------------------- status


def test_without_a_model_nothing_is_built(media, fake_index):
    built, message = service.index_status()
    assert not built
    assert "no hash-code model" in message
    with pytest.raises(similarity.IndexNotBuilt):
        service.search([picture(1)], 5)


def test_model_without_codes_is_not_built_and_says_so(media, fake_model):
    make_stills(2, media / "in")
    built, message = service.index_status()
    assert not built and "no image has been indexed" in message
    # The acquisition pages' delegate refuses with the same message.
    with pytest.raises(similarity.IndexNotBuilt, match="no image has been indexed"):
        similarity.similar_images([picture(1)], 5)


# --------------------------------------------------------------------------- indexing


def test_indexing_stores_codes_fills_backend_and_reports(media, fake_model, fake_index):
    stills = make_stills(6, media / "in")
    report = indexing.index_images(chunk_size=4)
    assert (report.pending, report.indexed, report.skipped) == (6, 6, 0)
    assert report.n_codes == report.n_index == 6
    assert fake_index.persisted >= 1
    stored = dict(HashCode.objects.filter(version=fake_model).values_list("image_id", "code"))
    assert set(stored) == {s.pk for s in stills}
    for still in stills:
        with PILImage.open(media_path(still.file)) as img:
            expected = FakeEncoder.code(img)
        assert bytes(stored[still.pk]) == expected.tobytes()
        assert np.array_equal(fake_index.codes[still.pk], expected)
    built, message = service.index_status()
    assert built and "6 of 6 images indexed" in message
    # A second run finds nothing to do and encodes nothing.
    encoder = encoder_cache[(fake_model.pk, "")]
    calls = encoder.calls
    again = indexing.index_images()
    assert (again.pending, again.indexed, again.rebuilt) == (0, 0, None)
    assert encoder.calls == calls


class CancellingContext:
    """Records progress; asks to cancel after ``after`` chunks (like a user's click)."""

    def __init__(self, after: int):
        self.after = after
        self.chunks = 0
        self.progressed: list[tuple[int, int | None]] = []
        self.metrics: list[tuple[str, float, float]] = []
        self.lines: list[str] = []

    def progress(self, done, total=None, note=None):
        self.progressed.append((done, total))

    def metric(self, series, step, value):
        self.metrics.append((series, step, value))

    def log(self, message):
        self.lines.append(message)

    def check_cancelled(self):
        self.chunks += 1
        if self.chunks >= self.after:
            raise JobCancelled()


def test_indexing_is_chunked_cancellable_and_resumes(media, fake_model, fake_index):
    make_stills(7, media / "in")
    ctx = CancellingContext(after=2)
    with pytest.raises(JobCancelled):
        indexing.index_images(chunk_size=3, ctx=ctx)
    # Two chunks of three are stored and reached the backend (persisted on the way out).
    assert HashCode.objects.count() == 6
    assert len(fake_index.codes) == 6 and fake_index.persisted >= 1
    assert (6, 7) in ctx.progressed
    assert [m[0] for m in ctx.metrics] == ["images/s", "images/s"]
    report = indexing.index_images(chunk_size=3, ctx=CancellingContext(after=99))
    assert (report.pending, report.indexed) == (1, 1)
    assert HashCode.objects.count() == 7 == len(fake_index.codes)


def test_unreadable_images_are_skipped_not_fatal(media, fake_model, fake_index):
    stills = make_stills(3, media / "in")
    media_path(stills[1].file).write_bytes(b"not a jpeg any more")
    ctx = CancellingContext(after=99)
    report = indexing.index_images(ctx=ctx)
    assert (report.indexed, report.skipped) == (2, 1)
    assert any(f"image {stills[1].pk}" in line for line in ctx.lines)
    assert set(fake_index.codes) == {stills[0].pk, stills[2].pk}


def test_given_image_ids_only(media, fake_model, fake_index):
    stills = make_stills(4, media / "in")
    report = indexing.index_images(image_ids=[stills[0].pk, stills[2].pk])
    assert report.indexed == 2
    assert set(fake_index.codes) == {stills[0].pk, stills[2].pk}


def test_backend_is_rebuilt_from_stored_codes(media, fake_model, fake_index):
    """E.g. the worker died before the FAISS files were written, or the backend changed."""
    make_stills(5, media / "in")
    indexing.index_images()
    kept = dict(fake_index.codes)
    fake_index.codes.clear()
    report = indexing.index_images()
    assert report.rebuilt == 5 and report.indexed == 0
    assert fake_index.rebuilt == 1
    assert set(fake_index.codes) == set(kept)
    assert all(np.array_equal(fake_index.codes[i], kept[i]) for i in kept)


def test_deleted_images_leave_the_index_without_a_rebuild(media, fake_model, fake_index):
    stills = make_stills(5, media / "in")
    indexing.index_images()
    Image.objects.filter(pk=stills[1].pk).delete()  # its HashCode goes by cascade
    report = indexing.index_images()
    assert report.rebuilt is None and fake_index.rebuilt == 0
    assert set(fake_index.codes) == {s.pk for s in stills} - {stills[1].pk}


def test_indexing_holds_the_write_lock(media, fake_model, fake_index, monkeypatch):
    """A second run of the same version waits for the first (two worker processes)."""
    import fcntl

    make_stills(2, media / "in")
    path = indexing.lock_path(fake_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    waits = []

    def sleep(_seconds):
        waits.append(1)
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)  # the other run finishes

    monkeypatch.setattr(indexing.time, "sleep", sleep)
    with open(path, "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        report = indexing.index_images()
    assert waits and report.indexed == 2


def test_full_run_marks_the_version_complete(media, fake_model, fake_index):
    make_stills(2, media / "in")
    indexing.index_images(image_ids=[Image.objects.first().pk])
    fake_model.refresh_from_db()
    assert not indexing.index_complete(fake_model)
    indexing.index_images()
    fake_model.refresh_from_db()
    assert indexing.index_complete(fake_model)


def test_new_model_without_codes_says_the_index_is_being_built(media, fake_model, fake_index):
    stills = make_stills(3, media / "in")
    ModelVersion.objects.filter(pk=fake_model.pk).update(is_active=False)
    newer = make_version(2)
    encoder_cache[(newer.pk, "")] = FakeEncoder(newer)
    with pytest.raises(similarity.IndexNotBuilt, match="being built"):
        service.search([stills[0].pk], 5)


def test_new_model_searches_the_previous_complete_index_until_its_own_is(
    media, fake_model, fake_index, monkeypatch
):
    per_version: dict[int, FakeIndex] = {}
    monkeypatch.setattr(
        backends, "_open", lambda version, name: per_version.setdefault(version.pk, FakeIndex())
    )
    backends.forget()
    stills = make_stills(4, media / "in")
    indexing.index_images()  # v1: complete
    ModelVersion.objects.filter(pk=fake_model.pk).update(is_active=False)
    newer = make_version(2)
    encoder_cache[(newer.pk, "")] = FakeEncoder(newer)
    indexing.index_images(newer, image_ids=[stills[0].pk])  # partial
    assert service.searchable_version() == fake_model
    assert len(service.search([stills[1].pk], 10)) == 3
    current = service.status()
    assert current.built and current.version == fake_model and current.n_codes == 4
    assert "new hashing model v2 is being built" in current.message
    indexing.index_images(newer)
    assert service.searchable_version() == newer


def test_encoder_cache_keeps_only_the_newest(media, fake_model, monkeypatch):
    from retrieval.hashing import encoder as enc

    built = []

    class Built:
        def __init__(self, version, perm, device=None):
            built.append(version.pk)

    monkeypatch.setattr(enc, "HashEncoder", Built)
    monkeypatch.setattr(enc, "stored_permutation", lambda version: None)
    newer = make_version(2, active=False)
    first = service.get_encoder(fake_model)
    assert service.get_encoder(fake_model) is first
    service.get_encoder(newer)
    assert list(encoder_cache) == [(newer.pk, "")]


# --------------------------------------------------------------------------- queries


@pytest.fixture
def indexed(media, fake_model, fake_index):
    stills = make_stills(8, media / "in")
    indexing.index_images()
    return stills


def stored_picture(image: Image) -> PILImage.Image:
    with PILImage.open(media_path(image.file)) as img:
        return img.convert("RGB")


def test_query_by_picture_finds_the_same_image_first(indexed):
    results = service.similar_images([stored_picture(indexed[3])], 5)
    assert results[0] == (indexed[3].pk, 0.0)
    assert len(results) == 5
    distances = [d for _, d in results]
    assert distances == sorted(distances)


def test_query_by_ids_excludes_the_query_and_merges_by_minimum(indexed, fake_index):
    a, b = indexed[0].pk, indexed[5].pk
    results = service.similar_images([a, b], 100)
    ids = [i for i, _ in results]
    assert a not in ids and b not in ids
    assert len(ids) == 6
    for image_id, distance in results:
        expected = min(
            hamming(fake_index.codes[image_id], fake_index.codes[a]),
            hamming(fake_index.codes[image_id], fake_index.codes[b]),
        )
        assert distance == expected
    assert results == sorted(results, key=lambda p: (p[1], p[0]))


def test_query_image_without_code_is_encoded_from_its_file(indexed, fake_index):
    target = indexed[2]
    HashCode.objects.filter(image=target).delete()
    results = service.similar_images([target.pk], 3)
    expected = sorted(
        (i, hamming(c, fake_index.codes[target.pk])) for i, c in fake_index.codes.items()
    )
    expected = sorted((p for p in expected if p[0] != target.pk), key=lambda p: (p[1], p[0]))
    assert results == [(i, float(d)) for i, d in expected[:3]]


def test_deleted_images_never_come_back(indexed):
    gone = indexed[4].pk
    Image.objects.filter(pk=gone).delete()
    ids = [i for i, _ in service.similar_images([stored_picture(indexed[1])], 20)]
    assert gone not in ids and len(ids) == 7


def test_keyframes_only_drops_stills(indexed, fake_index):
    frames = make_keyframes(2, per_shot=2)
    indexing.index_images()
    results = service.search([indexed[0].pk], 50, keyframes_only=True)
    assert sorted(i for i, _ in results) == sorted(f.pk for f in frames)
    everything = service.search([indexed[0].pk], 50)
    assert len(everything) == 7 + len(frames)


def test_backend_down_is_a_clear_error(indexed, fake_index):
    fake_index.down = True
    with pytest.raises(IndexUnavailable) as info:
        service.similar_images([picture(1)], 5)
    assert "cannot be used right now" in str(info.value)
    assert "Connection refused" in str(info.value)
    # The acquisition pages get a SimilarityError with the same message.
    with pytest.raises(similarity.SimilarityError, match="cannot be used right now"):
        similarity.similar_images([picture(1)], 5)
    current = service.status(ask_backend=True)
    assert current.built and "cannot be used right now" in current.backend_error


# --------------------------------------------------------------------------- new images


def test_new_images_start_one_indexing_job(media, fake_model, django_capture_on_commit_callbacks):
    from viva.signals import send_images_added

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        send_images_added([5, 3, 5, 9], source="import")
    callbacks[0]()  # the signal; the job's own enqueue stays queued in the test transaction
    jobs = list(Job.objects.filter(kind=service.JOB_KIND))
    assert len(jobs) == 1
    assert jobs[0].params["image_ids"] == [3, 5, 9]


def test_new_images_join_a_queued_full_indexing_job(
    media, fake_model, django_capture_on_commit_callbacks
):
    from viva.signals import send_images_added

    full, started = service.start_index_job({}, title="full")
    assert started
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        send_images_added([4, 2], source="import")
    callbacks[-1]()
    assert list(Job.objects.filter(kind=service.JOB_KIND)) == [full]
    assert service.start_index_job({}, title="again") == (full, False)


def test_redelivered_fit_job_starts_its_missing_index_job(media, fake_model, users):
    from retrieval.hashing.jobs import FIT_JOB, _already_done
    from viva.jobs import JobContext

    fit = Job.objects.create(kind=FIT_JOB, params={})
    ModelVersion.objects.filter(pk=fake_model.pk).update(job=fit)
    ctx = JobContext(fit)
    assert _already_done(ctx)["version"] == fake_model.version
    assert Job.objects.filter(kind=service.JOB_KIND).count() == 1
    _already_done(ctx)  # a third delivery: the index job exists already
    assert Job.objects.filter(kind=service.JOB_KIND).count() == 1


def test_no_model_no_job(media, fake_index, django_capture_on_commit_callbacks):
    from viva.signals import send_images_added

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        send_images_added([1, 2], source="import")
    callbacks[0]()
    assert not Job.objects.filter(kind=service.JOB_KIND).exists()


# --------------------------------------------------------------------------- real pieces


def fit_tiny_model(sample_size: int = 50) -> ModelVersion:
    """ITQ codes over a tiny random CNN (seconds on a CPU): real encoder, real files."""
    from retrieval.hashing.train import fit_itq_model

    return fit_itq_model(
        sample_size=sample_size, network="tiny-cnn", init="random", device="cpu", batch_size=16
    )


@pytest.fixture
def real_models(settings, media):
    settings.VIVA_MODELS_DIR = media / "models"
    settings.VIVA_SEARCH_BACKEND = "faiss"
    service.forget_encoders()
    backends.forget()
    yield
    service.forget_encoders()
    backends.forget()


def test_real_encoder_and_faiss_index(real_models, media):
    pytest.importorskip("retrieval.search.faiss_index")
    stills = make_stills(10, media / "in")
    version = fit_tiny_model()
    report = indexing.index_images(version, chunk_size=4)
    assert report.indexed == 10 and report.n_index == 10
    assert (backends.faiss_directory(version)).is_dir()
    backends.forget()  # a new process: the index is read from its files
    results = service.similar_images([stored_picture(stills[6])], 4)
    assert results[0] == (stills[6].pk, 0.0)
    by_id = service.similar_images([stills[6].pk], 9)
    assert stills[6].pk not in [i for i, _ in by_id] and len(by_id) == 9


def test_build_job_fits_codes_then_indexes(real_models, media, users):
    """The page's "build the index" job on an empty installation, run in-process."""
    from viva.jobs import run_job, start_job

    pytest.importorskip("retrieval.search.faiss_index")
    make_stills(6, media / "in")
    job = start_job(
        service.JOB_KIND,
        {"fit_if_missing": True, "network": "tiny-cnn", "init": "random", "device": "cpu"},
        user=users["trainer"],
    )
    assert run_job(job.pk) == Job.Status.SUCCEEDED
    job.refresh_from_db()
    version = service.active_version()
    assert version is not None and version.train_config["method"] == "itq"
    assert job.result["indexed"] == 6 and job.result["n_index"] == 6
    assert job.progress == job.total == 6
    assert "images/s" in job.metrics
    assert "fitting unsupervised (ITQ) hash codes first" in job.log_tail
    assert service.index_status()[0]
    # Run again (a resumed or repeated job): nothing left to do, nothing refitted.
    again = start_job(service.JOB_KIND, {"fit_if_missing": True}, user=users["trainer"])
    assert run_job(again.pk) == Job.Status.SUCCEEDED
    again.refresh_from_db()
    assert again.result["indexed"] == 0 and again.result["n_codes"] == 6
    assert ModelVersion.objects.filter(kind=ModelVersion.Kind.HASHING).count() == 1


def test_job_without_model_fails_with_advice(media, fake_index, users):
    from viva.jobs import run_job, start_job

    job = start_job(service.JOB_KIND, {"image_ids": [1]})
    assert run_job(job.pk) == Job.Status.FAILED
    job.refresh_from_db()
    assert "Hash codes" in job.error


# --------------------------------------------------------------------------- Elasticsearch


@pytest.fixture
def es_settings(settings, media):
    settings.VIVA_SEARCH_BACKEND = "elasticsearch"
    settings.VIVA_ES_RERANK = "client"  # osmem-server has no stored painless scripts
    settings.VIVA_ES_TIMEOUT = 10
    backends.forget()
    yield settings
    backends.forget()


def test_elasticsearch_down_is_a_clear_error(es_settings, media, users):
    from tests.test_similarity_elastic import closed_port_url

    es_settings.VIVA_ES_URL = closed_port_url()
    version = make_version()
    encoder_cache[(version.pk, "")] = FakeEncoder(version)
    stills = make_stills(2, media / "in")
    HashCode.objects.create(version=version, image=stills[0], code=bytes(32))
    assert service.index_status()[0]  # from the database: the acquisition pages stay fast
    with pytest.raises(IndexUnavailable, match="cannot be reached: connection refused"):
        service.similar_images([stills[1].pk], 5)
    assert "connection refused" in service.status(ask_backend=True).backend_error
    service.forget_encoders()


@pytest.mark.slow
def test_indexing_and_search_in_elasticsearch(es_settings, media, es_url):  # noqa: F811
    from tests.test_similarity_elastic import NBS

    es_settings.VIVA_ES_URL = es_url
    es_settings.VIVA_ES_NEIGHBOURS_INDEX = NBS
    version = make_version()
    encoder_cache[(version.pk, "")] = FakeEncoder(version)
    stills = make_stills(6, media / "in")
    report = indexing.index_images(version, chunk_size=4)
    assert report.indexed == 6 and report.n_index == 6
    index_name, alias = backends.es_names(version)
    client = backends.get_index(version).client
    assert list(client.indices.get_alias(name=alias)) == [index_name]
    assert service.similar_images([stored_picture(stills[2])], 3)[0] == (stills[2].pk, 0.0)
    # A new hashing model gets its own index: the old codes never answer its queries.
    ModelVersion.objects.filter(pk=version.pk).update(is_active=False)
    newer = make_version(2)
    encoder_cache[(newer.pk, "")] = FakeEncoder(newer)
    assert indexing.index_images(newer, image_ids=[stills[0].pk]).n_index == 1
    # Until a full run of the new model completes, the complete old index answers.
    assert len(service.similar_images([stills[3].pk], 5)) == 5
    indexing._mark_complete(newer)
    assert [i for i, _ in service.similar_images([stills[3].pk], 5)] == [stills[0].pk]
    service.forget_encoders()
