"""``manage.py bench <name> [--json]``: measure our code against a baseline in one run.

Each benchmark is a module with ``add_arguments(parser)`` and ``run(**options) -> dict``;
the command prints a short table and, as its last line, one JSON object (DESIGN.md 7).
"""

from __future__ import annotations

import argparse
import importlib
import json as jsonlib

from django.core.management.base import BaseCommand, CommandError

BENCHMARKS = {
    "shots": "viva.benchmarks.shots",
    "grid": "annotation.benchmarks.grid",
    "training": "training.benchmarks.training",
    "retrieval": "retrieval.benchmarks.retrieval",
    "inference": "retrieval.benchmarks.inference",
    "similarity": "retrieval.benchmarks.similarity",
    "face-search": "retrieval.benchmarks.face_search",
    "faces": "training.benchmarks.faces",
}


class Command(BaseCommand):
    help = "Run a benchmark: " + ", ".join(BENCHMARKS)

    def add_arguments(self, parser):
        parser.add_argument("name", choices=sorted(BENCHMARKS))
        parser.add_argument(
            "--json", dest="json_only", action="store_true", help="Print only the JSON line."
        )
        parser.add_argument("bench_args", nargs=argparse.REMAINDER)

    def handle(self, *args, name: str, json_only: bool = False, bench_args=None, **options):
        bench_args = list(bench_args or [])
        if "--json" in bench_args:  # argparse.REMAINDER swallows flags given after the name
            bench_args.remove("--json")
            json_only = True
        module = importlib.import_module(BENCHMARKS[name])
        sub = argparse.ArgumentParser(prog=f"bench {name}")
        module.add_arguments(sub)
        try:
            bench_options = vars(sub.parse_args(bench_args))
        except SystemExit as exc:
            raise CommandError(f"Bad options for bench {name}.") from exc
        result = module.run(**bench_options)
        result.setdefault("name", name)
        if not json_only:
            width = max(len(k) for k in result)
            for key, value in result.items():
                if isinstance(value, float):
                    value = f"{value:.4g}"
                self.stdout.write(f"{key.ljust(width)}  {value}")
        self.stdout.write(_json_line(result))


def _json_line(result: dict) -> str:
    return jsonlib.dumps(result, default=str)
