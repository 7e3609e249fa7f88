"""``manage.py es_setup [--check] [--recreate [--noinput]]``: prepare the ElasticHash cluster.

Creates what the Elasticsearch/OpenSearch backend needs (thesis 4.2.3, docs/elastichash.md):
the codes index with the mapping of Listing 4.1 behind the alias that VIVA reads and writes,
the 65,536-document neighbour index ``nbs-d2`` (Listing 4.2) and the stored painless script
``hd64`` (Listing 4.3). Safe to run again: it only adds what is missing.

Which codes index: the similarity service keeps one index and alias per hashing model
version (``VIVA_ES_INDEX-v<pk>``, ``VIVA_ES_ALIAS-v<pk>``). Without ``--index``/``--alias`` the
command prepares those of ``--model-version`` or, by default, of the active hashing model; with
no hashing model yet, only the shared neighbour index and script (the indexing job creates the
codes index of each model itself).

``--recreate`` deletes the codes index first (``--recreate-neighbours`` also the neighbour
index, which never changes and takes longest to build); the script is simply stored again.
The hash codes stay in the database, so nothing is lost for good, but similarity search
returns nothing until the archive is re-indexed — hence the confirmation.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.similarity import SimilarityError
from retrieval.search.elastic import RERANK_MODES, ElasticCodeIndex, public_url


class Command(BaseCommand):
    help = (
        "Create the Elasticsearch/OpenSearch indexes, alias and stored script of the ElasticHash "
        "similarity backend (idempotent); --recreate deletes and recreates them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", help="cluster URL (default: VIVA_ES_URL)")
        parser.add_argument("--index", help="first concrete codes index (default: VIVA_ES_INDEX)")
        parser.add_argument("--alias", help="alias VIVA reads and writes (default: VIVA_ES_ALIAS)")
        parser.add_argument(
            "--neighbours-index", help="neighbour lookup index (default: VIVA_ES_NEIGHBOURS_INDEX)"
        )
        parser.add_argument(
            "--model-version",
            type=int,
            metavar="PK",
            help="hashing model version whose codes index to prepare (default: the active one)",
        )
        parser.add_argument("--timeout", type=float, help="seconds (default: VIVA_ES_TIMEOUT)")
        parser.add_argument(
            "--rerank",
            choices=RERANK_MODES,
            help="server: stored painless script (ElasticHash); client: re-rank in VIVA, for "
            "clusters without stored scripts (default: VIVA_ES_RERANK)",
        )
        parser.add_argument(
            "--knn",
            action="store_true",
            help="also map codes as Elasticsearch 8.15+ bit vectors (native kNN mode)",
        )
        parser.add_argument(
            "--check", action="store_true", help="only report whether the cluster answers"
        )
        parser.add_argument(
            "--recreate",
            action="store_true",
            help="delete the codes index, then create everything again",
        )
        parser.add_argument(
            "--recreate-neighbours",
            action="store_true",
            help="with --recreate: also rebuild the neighbour index (normally kept: it never "
            "changes)",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="do not ask before --recreate deletes the index",
        )

    def handle(self, *args, **options) -> None:
        names, what = self._names(options)
        try:
            index = ElasticCodeIndex(
                options["url"],
                names[0],
                names[1],
                options["neighbours_index"],
                options["timeout"],
                rerank=options["rerank"],
                knn=options["knn"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        ok, message = index.ping()
        if not ok:
            raise CommandError(message)
        self.stdout.write(message)
        if options["check"]:
            return
        codes = what is not None
        if not codes and options["recreate"]:
            raise CommandError(
                "--recreate needs a codes index: name it with --index/--alias or --model-version."
            )
        self.stdout.write(
            f"codes index: {index.alias!r} ({what})"
            if codes
            else "No hashing model yet: preparing the shared neighbour index and script only."
        )
        try:
            if options["recreate"]:
                self._recreate(
                    index,
                    interactive=options["interactive"],
                    neighbours=options["recreate_neighbours"],
                )
            done = index.setup(progress=self._progress, codes=codes)
        except SimilarityError as exc:
            raise CommandError(str(exc)) from exc
        for part, state in done.items():
            self.stdout.write(f"{part}: {state}")
        where = f"alias {index.alias!r}, " if codes else ""
        self.stdout.write(
            self.style.SUCCESS(
                f"ElasticHash ready at {public_url(index.url)}: {where}neighbours "
                f"{index.neighbours_index!r}, re-ranking on the {index.rerank} side."
            )
        )

    def _names(self, options: dict) -> tuple[tuple[str | None, str | None], str | None]:
        """``((index, alias), description)``; description ``None``: no codes index to prepare."""
        if options["index"] or options["alias"]:
            return (options["index"], options["alias"]), "as given"
        from training.models import ModelVersion

        from ...search.backends import es_names

        versions = ModelVersion.objects.filter(kind=ModelVersion.Kind.HASHING)
        if options["model_version"] is not None:
            version = versions.filter(pk=options["model_version"]).first()
            if version is None:
                raise CommandError(f"There is no hashing model version {options['model_version']}.")
        else:
            version = versions.filter(is_active=True).first()
            if version is None:
                return (None, None), None
        return es_names(version), f"hashing model v{version.version}"

    def _recreate(self, index: ElasticCodeIndex, *, interactive: bool, neighbours: bool) -> None:
        held = index.count()
        if interactive:
            answer = input(
                f"This deletes the similarity index {index.alias!r} at {public_url(index.url)} "
                f"({held} hash codes). The codes stay in the database; "
                "similarity search is empty until the archive is re-indexed.\n"
                "Type 'yes' to continue: "
            )
            if answer.strip().lower() != "yes":
                raise CommandError("Nothing deleted.")
        deleted = index.delete_all(neighbours=neighbours)
        self.stdout.write(f"deleted: {', '.join(deleted) or 'nothing'} ({held} codes)")

    def _progress(self, done: int, total: int) -> None:
        self.stdout.write(f"neighbour index: {done}/{total}")
