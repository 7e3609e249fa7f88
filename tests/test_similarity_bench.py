"""``manage.py bench similarity`` on a tiny archive: the JSON keys of DESIGN.md 7 and sane
values. The data keep the 10 M run's 500 codes per cluster, so recall means the same."""

from __future__ import annotations

import json
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command

from retrieval.benchmarks import similarity

REQUIRED = ("n", "recall_at_100", "p50_ms", "p95_ms", "baseline_p50_ms", "speedup")


def bench(*args: str) -> dict:
    out = StringIO()
    call_command("bench", "similarity", *args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    return json.loads(lines[-1])


def test_bench_json_line_small_run_mih():
    result = bench(
        "--json", "--n", "30000", "--clusters", "60", "--queries", "12", "--mih-min", "0"
    )
    for key in REQUIRED:
        assert key in result, key
    assert result["name"] == "similarity"
    assert result["n"] == 30000 and result["n_queries"] == 12
    assert result["method"] == "mih"
    assert 0.9 <= result["recall_at_100"] <= 1.0
    assert 0.0 <= result["coarse64_recall_at_100"] <= result["recall_at_100"]
    assert 0 < result["p50_ms"] <= result["p95_ms"]
    assert result["baseline_p50_ms"] > 0
    assert result["speedup"] == pytest.approx(
        result["baseline_p50_ms"] / result["p50_ms"], rel=0.02, abs=0.01
    )
    assert result["memory_mb"] > 0 and result["baseline_memory_mb"] > 0
    assert result["load_s"] is not None  # persisted and reopened as a new process would


def test_bench_table_then_json_exhaustive():
    out = StringIO()
    call_command(
        "bench", "similarity", "--n", "5000", "--clusters", "10", "--queries", "5", stdout=out
    )
    lines = out.getvalue().strip().splitlines()
    assert any(line.startswith("recall_at_100") for line in lines[:-1])  # the table
    result = json.loads(lines[-1])
    assert result["method"] == "exhaustive"
    assert result["recall_at_100"] == 1.0  # FAISS's exact index below MIH_MIN_CODES


def test_generated_codes_follow_the_recipe():
    batches = list(similarity.clustered_codes(4000, clusters=4, flip=0.12, seed=3, chunk=1500))
    assert [len(ids) for ids, _ in batches] == [1500, 1500, 1000]
    ids = np.concatenate([i for i, _ in batches])
    assert np.array_equal(ids, np.arange(4000))
    codes = np.concatenate([c for _, c in batches])
    # Members of one cluster differ in ≈ 2·0.12·0.88 = 21 % of their bits, others in 50 %.
    d = np.unpackbits(codes[:200, None] ^ codes[None, :200], axis=2).sum(axis=2)
    upper = d[np.triu_indices(200, 1)]
    assert set(np.unique(np.round(upper / 256, 1))) <= {0.1, 0.2, 0.3, 0.4, 0.5, 0.6}
    assert ((upper > 30) & (upper < 80)).mean() == pytest.approx(0.25, abs=0.08)
