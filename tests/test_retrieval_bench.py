"""``manage.py bench retrieval`` end to end at a tiny size (DESIGN.md section 7, issue 5).

The bench builds its own database (a file in ``tmp_path``) and never touches the test
database; the connection settings are restored afterwards.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.db import connection


@pytest.mark.slow  # a few seconds: builds a 20,000-prediction database
def test_bench_retrieval_tiny(tmp_path, django_db_blocker):
    name_before = connection.settings_dict["NAME"]
    out = io.StringIO()
    with django_db_blocker.unblock():
        call_command(
            "bench",
            "retrieval",
            "--json",
            "--predictions",
            "20000",
            "--categories",
            "20",
            "--samples",
            "3",
            "--no-keep",
            "--quiet",
            "--db-dir",
            str(tmp_path),
            stdout=out,
        )
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("n_predictions", "p95_ms", "combined_p95_ms"):
        assert key in result, key
    assert result["n_predictions"] == 20000 and result["db"] == connection.vendor
    assert result["page_items_min"] == 100  # every top-100 page is full
    assert result["combined_total_median"] > 0  # the combined query finds something
    assert connection.settings_dict["NAME"] == name_before
    assert not list(tmp_path.glob("*.sqlite3"))  # --no-keep
