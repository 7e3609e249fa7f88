"""``manage.py import_images PATH… [--collection NAME] [--sync | --wait]``: still images."""

from __future__ import annotations

from ...ingest.importer import IMAGE_SUFFIXES
from ...models import Collection
from .import_videos import ImportCommand


class Command(ImportCommand):
    help = "Import still images (files or folders) into a collection."
    job_kind = "import_images"
    suffixes = IMAGE_SUFFIXES
    noun = "image"
    default_collection = "Images"
    collection_kind = Collection.Kind.STILLS
