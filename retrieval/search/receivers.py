"""Index new images as they arrive (issue 6, item 3): the ``images_added`` receiver.

One ``index_images`` job per signal (an import of 500 keyframes is one job, not 500), none
while a full indexing job is queued (it covers them), and only when a hashing model
exists: without one there is nothing to encode with, and the full indexing job will cover
these images when the index is built.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def index_new_images(sender, image_ids=None, source: str = "", **kwargs) -> None:
    """Start a background job for the new images; never raises (the import stands)."""
    try:
        ids = sorted({int(i) for i in image_ids or []})
        if not ids:
            return
        from .service import active_version, start_index_job

        version = active_version()
        if version is None:
            return
        # A queued full indexing job covers these images (it looks for every image
        # without a code when it starts): no second job then. Others run one after the
        # other (one writer per index: indexing.writer_lock).
        start_index_job(
            {"image_ids": ids, "source": source},
            title=f"Index {len(ids)} new image(s) ({source or 'import'})",
        )
    except Exception:  # noqa: BLE001 - a receiver must never break an import
        log.exception("Could not start indexing of %s new images", len(image_ids or []))
