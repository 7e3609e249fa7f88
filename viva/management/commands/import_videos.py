"""``manage.py import_videos PATH… [--collection NAME] [--sync | --wait]``.

Files and folders (searched recursively) are imported by the ``import_videos`` job: shot
detection, up to five keyframes per shot, thumbnails; a ``<video>.json`` sidecar may give
title, date, year and metadata. By default the job goes to the worker and the command
prints its id and page; ``--sync`` runs it here and prints the result.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from ...demo import run_job_inline
from ...ingest.importer import VIDEO_SUFFIXES, expand_paths
from ...jobs import start_job
from ...models import Collection, Job


class ImportCommand(BaseCommand):
    """Shared by ``import_videos`` and ``import_images``."""

    job_kind = "import_videos"
    suffixes = VIDEO_SUFFIXES
    noun = "video"
    default_collection = "Archive"
    collection_kind = Collection.Kind.ARCHIVE

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="PATH", help="Files or folders.")
        parser.add_argument(
            "--collection",
            default=self.default_collection,
            help=f"Target collection, created if missing (default: {self.default_collection!r}).",
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--sync",
            action="store_true",
            help="Run the import in this process instead of on a worker.",
        )
        mode.add_argument(
            "--wait",
            action="store_true",
            help="Queue the job for a worker and wait until it has finished.",
        )
        parser.add_argument("--user", help="Record this user as the job's creator.")
        parser.add_argument(
            "--base-url",
            default=os.environ.get("VIVA_BASE_URL", "http://127.0.0.1:8000"),
            help="Used to print the job's page (default: $VIVA_BASE_URL or %(default)s).",
        )

    def handle(
        self, *args, paths, collection, sync=False, wait=False, user=None, base_url="", **options
    ):
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise CommandError("No such file or folder: " + ", ".join(missing))
        absolute = [str(Path(p).resolve()) for p in paths]
        files = expand_paths(absolute, self.suffixes)
        if not files:
            raise CommandError(
                f"No {self.noun} files found (looked for {', '.join(sorted(self.suffixes))})."
            )
        creator = None
        if user:
            creator = get_user_model().objects.filter(username=user).first()
            if creator is None:
                raise CommandError(f"No user {user!r}.")
        target, created = Collection.objects.get_or_create(
            name=collection, defaults={"kind": self.collection_kind}
        )
        if created:
            self.stdout.write(f"Created the collection {target.name!r}.")
        params = {"collection_id": target.pk, "paths": absolute}
        title = f"Import of {len(files)} {self.noun}{'s' if len(files) != 1 else ''} into {target}"
        if sync:
            self.stdout.write(f"Importing {len(files)} {self.noun} file(s) into {target} …")
            job = run_job_inline(self.job_kind, params, title=title, user=creator)
            return self._finish(job)
        job = start_job(self.job_kind, params, title=title, user=creator)
        url = base_url.rstrip("/") + reverse("jobs:detail", args=[job.pk])
        self.stdout.write(f"Started job #{job.pk} ({len(files)} file(s)): {url}")
        if not wait:
            self.stdout.write(
                "A worker runs it (`make run` starts one; or: celery -A viva worker -Q "
                "default,io,gpu). Use --sync to import without a worker."
            )
            return
        last = ""
        while True:
            job.refresh_from_db()
            if job.status in Job.FINISHED:
                return self._finish(job)
            line = f"  {job.status}" + (f" {job.percent:.0f} %" if job.percent is not None else "")
            if line != last:
                self.stdout.write(line)
                last = line
            time.sleep(1)

    def _finish(self, job: Job) -> None:
        result = job.result or {}
        for entry in result.get("errors", []):
            self.stderr.write(f"  {entry.get('file')}: {entry.get('error')}")
        summary = result.get("summary") or job.error or job.status
        self.stdout.write(f"Job #{job.pk} {job.status}: {summary}")
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(job.error or f"The import {job.status}.")


class Command(ImportCommand):
    help = "Import videos (files or folders): shots, keyframes, thumbnails."
