"""``manage.py bench grid`` end to end at a tiny size (DESIGN.md section 7, issue 3).

The bench builds its own database (a file in ``tmp_path`` here, or a separate
PostgreSQL database when ``DATABASE_URL`` points at one) and never touches the test
database; it restores the connection settings, URLconf and cache when it is done.
"""

from __future__ import annotations

import io
import json

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

REQUIRED = ("images", "annotations", "db", "page_p95_ms", "save_p95_ms", "page_queries")
TINY = [
    "--images",
    "2000",
    "--annotations",
    "10000",
    "--categories",
    "20",
    "--candidates",
    "600",
    "--samples",
    "2",
    "--warmup",
    "0",
    "--cold-samples",
    "1",
    "--baseline-samples",
    "1",
    "--no-keep",
    "--quiet",
    "--db-name",
    "viva_bench_grid_test",
]


@pytest.fixture
def bench_grid(tmp_path, django_db_blocker):
    def run(*extra: str) -> dict:
        out = io.StringIO()
        with django_db_blocker.unblock():
            call_command(
                "bench", "grid", "--json", *TINY, "--db-dir", str(tmp_path), *extra, stdout=out
            )
        lines = out.getvalue().strip().splitlines()
        assert len(lines) == 1, "--json prints the JSON line only"
        return json.loads(lines[-1])

    return run


@pytest.mark.slow  # about 8 s on an idle 2-core machine (building the database included)
def test_bench_grid_tiny(bench_grid, tmp_path):
    name_before = connection.settings_dict["NAME"]
    urlconf_before = settings.ROOT_URLCONF

    result = bench_grid()

    for key in REQUIRED:
        assert key in result, key
    assert result["name"] == "grid"
    assert (result["images"], result["annotations"]) == (2000, 10000)
    assert result["db"] == connection.vendor
    assert result["cached"] is False  # built fresh in tmp_path
    assert result["page_p95_ms"] > 0 and result["save_p95_ms"] > 0
    # Issue 3: at most 15 queries per page, whatever the page size.
    assert result["page_queries"] <= 15
    for page, by_size in result["page_queries_by_size"].items():
        assert set(by_size) == {"100", "6"}, page
        assert len(set(by_size.values())) == 1, f"{page}: queries depend on page size {by_size}"
    # The naive baseline really is one query per image.
    assert result["baseline_page_queries"] >= 100
    assert result["ratio"] > 0
    assert result["save"]["n"] == 2 and result["save"]["batch"] == 100

    # Nothing of the bench is left behind: settings restored, database dropped.
    assert connection.settings_dict["NAME"] == name_before
    assert settings.ROOT_URLCONF == urlconf_before
    assert not list(tmp_path.glob("*.sqlite3"))


def test_bench_grid_bad_option(bench_grid):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        bench_grid("--images", "many")
