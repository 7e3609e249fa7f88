"""Job handlers of this package (imported by the app's job_handlers module).

``index_face_embeddings`` rebuilds the face index from every stored embedding (thin: the
work is :func:`retrieval.face_search.service.rebuild_face_index`, checkpointed, so a
resumed job continues and a second run just builds again).
"""

from __future__ import annotations

from viva.jobs import JobContext, job_handler

from .service import JOB_KIND, rebuild_face_index


@job_handler(JOB_KIND, queue="default", label="face index rebuild")
def index_face_embeddings_job(ctx: JobContext) -> dict:
    import faiss

    threads = ctx.params.get("threads")
    if threads:
        faiss.omp_set_num_threads(int(threads))
    ctx.progress(0, None, note="Reading the face embeddings …")
    stats = rebuild_face_index(
        progress=lambda done, total: ctx.progress(done, total, note="Adding faces …"),
        log=ctx.log,
        check=ctx.check_cancelled,
    )
    return {
        "summary": f"The face index holds {stats['count']:,} faces ({stats['type']}).",
        **{k: stats[k] for k in ("count", "type", "kind", "nlist", "nprobe", "last_id")},
    }
