"""Retrieval queries as plain data, read from and written to URL parameters.

Every retrieval page keeps its whole state in the query string, so a result list is
shareable by copying the URL and the same parsing serves the ranked page, the combined
search, the export form and (later) the API.

A combined query is a list of :class:`Term` s plus metadata filters::

    ?t=concept:12:and:0.5&t=concept:7:or:0.6&t=concept:9:not:0.5
     &title=news&year_from=1970&year_to=1980&collection=3&hide_labelled=1&order=desc

Each ``t`` is ``kind:category_id:operator:min_score``. ``kind`` is ``concept`` or
``person`` — a person term is just another term kind, scored from the published person
run when there is one. The same structure also comes from repeated form rows
(``term_category``, ``term_op``, ``term_min``), which the search page submits and then
redirects to the compact ``t=`` form.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from django.http import QueryDict

__all__ = [
    "DEFAULT_MIN_SCORE",
    "default_min_score",
    "MAX_TERMS",
    "OPERATORS",
    "Filters",
    "Query",
    "Term",
    "parse_filters",
    "parse_query",
]

OPERATORS = ("and", "or", "not")
KINDS = ("concept", "person")
MAX_TERMS = 10
DEFAULT_MIN_SCORE = 0.5
YEAR_MIN, YEAR_MAX = 1800, 2200


def default_min_score(kind: str) -> float:
    """A term's minimum score when none is given: :data:`DEFAULT_MIN_SCORE` for concepts;
    for persons the published person run's ``score_floor`` (the model's rejection
    threshold, as on the ranked and persons pages) when there is one."""
    if kind == "person":
        from .ranking import published_run  # lazily: ranking imports this module

        run = published_run("person")
        if run is not None:
            return float(run.score_floor)
    return DEFAULT_MIN_SCORE


@dataclass(frozen=True)
class Term:
    """One category condition: ``score(category) >= min_score`` combined with ``op``."""

    category_id: int
    op: str = "and"
    min_score: float = DEFAULT_MIN_SCORE
    kind: str = "concept"
    # The min score was not given (the kind's default): a kind learnt later
    # (:meth:`Query.with_kinds`) brings its own default.
    default_min: bool = field(default=False, compare=False, repr=False)

    def as_param(self) -> str:
        return f"{self.kind}:{self.category_id}:{self.op}:{self.min_score:g}"


@dataclass(frozen=True)
class Filters:
    """Metadata filters shared by the ranked page, the combined search and the export."""

    min_score: float | None = None
    hide_labelled: bool = False
    collection_id: int | None = None
    title: str = ""
    year_from: int | None = None
    year_to: int | None = None
    descending: bool = True
    group_by_shot: bool = False

    def as_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.min_score is not None:
            params["min_score"] = f"{self.min_score:g}"
        if self.hide_labelled:
            params["hide_labelled"] = "1"
        if self.collection_id:
            params["collection"] = str(self.collection_id)
        if self.title:
            params["title"] = self.title
        if self.year_from is not None:
            params["year_from"] = str(self.year_from)
        if self.year_to is not None:
            params["year_to"] = str(self.year_to)
        if not self.descending:
            params["order"] = "asc"
        if self.group_by_shot:
            params["group"] = "shot"
        return params

    @property
    def needs_metadata(self) -> bool:
        return bool(self.collection_id or self.title or self.year_from or self.year_to)


@dataclass(frozen=True)
class Query:
    """A combined query: terms (AND / OR / NOT) plus metadata filters."""

    terms: tuple[Term, ...] = ()
    filters: Filters = field(default_factory=Filters)
    errors: tuple[str, ...] = ()

    @property
    def positive_terms(self) -> list[Term]:
        return [t for t in self.terms if t.op != "not"]

    @property
    def is_runnable(self) -> bool:
        """At least one AND/OR term: a query of only NOT terms ranks nothing."""
        return bool(self.positive_terms)

    def as_params(self) -> list[tuple[str, str]]:
        params = [("t", term.as_param()) for term in self.terms]
        params += list(self.filters.as_params().items())
        return params

    def urlencode(self) -> str:
        return urlencode(self.as_params(), safe=":")

    def with_kinds(self, kinds: dict[int, str]) -> Query:
        """Terms with their kind taken from the categories (``{id: kind}``); terms of
        unknown categories are dropped."""
        defaults: dict[str, float] = {}

        def retyped(t: Term) -> Term:
            kind = kinds[t.category_id]
            if not t.default_min or kind == t.kind:
                return replace(t, kind=kind)
            if kind not in defaults:
                defaults[kind] = default_min_score(kind)
            return replace(t, kind=kind, min_score=defaults[kind])

        terms = tuple(retyped(t) for t in self.terms if t.category_id in kinds)
        return replace(self, terms=terms)

    def with_filters(self, **changes: Any) -> Query:
        return replace(self, filters=replace(self.filters, **changes))


# --------------------------------------------------------------------------- parsing


def _float(raw: str | None, lo: float = 0.0, hi: float = 1.0) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw.replace(",", ".").rstrip("%"))
    except ValueError:
        return None
    if raw.strip().endswith("%") or value > 1.0:
        value /= 100.0  # "70" or "70 %" means 0.7
    if value != value:  # NaN
        return None
    return min(hi, max(lo, value))


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _year(raw: str | None) -> int | None:
    value = _int(raw)
    if value is None or not YEAR_MIN <= value <= YEAR_MAX:
        return None
    return value


def parse_filters(params: QueryDict | dict) -> Filters:
    """Filters from GET parameters; invalid values are ignored, not errors."""
    year_from, year_to = _year(params.get("year_from")), _year(params.get("year_to"))
    if year_from and year_to and year_from > year_to:
        year_from, year_to = year_to, year_from
    return Filters(
        min_score=_float(params.get("min_score")),
        hide_labelled=params.get("hide_labelled") in ("1", "on", "true"),
        collection_id=_int(params.get("collection")),
        title=(params.get("title") or "").strip()[:200],
        year_from=year_from,
        year_to=year_to,
        descending=params.get("order", "desc") != "asc",
        group_by_shot=params.get("group") == "shot",
    )


def _parse_term(raw: str) -> Term | str:
    parts = raw.split(":")
    if len(parts) == 3:
        parts = ["concept", *parts]
    if len(parts) != 4:
        return f"Cannot read the term {raw!r} (expected kind:category:operator:min score)."
    kind, cat, op, score = parts
    category_id = _int(cat)
    if kind not in KINDS or category_id is None or op.lower() not in OPERATORS:
        return f"Cannot read the term {raw!r}."
    return _term(category_id, op.lower(), _float(score), kind)


def _term(category_id: int, op: str, min_score: float | None, kind: str) -> Term:
    if min_score is None:
        return Term(category_id, op, default_min_score(kind), kind, default_min=True)
    return Term(category_id, op, min_score, kind)


def parse_query(params: QueryDict) -> Query:
    """A :class:`Query` from the compact ``t=`` parameters or the form's repeated rows."""
    errors: list[str] = []
    terms: list[Term] = []
    for raw in params.getlist("t"):
        term = _parse_term(raw)
        if isinstance(term, str):
            errors.append(term)
        else:
            terms.append(term)
    categories = params.getlist("term_category")
    ops = params.getlist("term_op")
    mins = params.getlist("term_min")
    kinds = params.getlist("term_kind")
    for i, raw in enumerate(categories):
        category_id = _int(raw)
        if category_id is None:
            continue  # an empty form row
        op = (ops[i] if i < len(ops) else "and").lower()
        if op not in OPERATORS:
            errors.append(f"Unknown operator {op!r}.")
            continue
        kind = kinds[i] if i < len(kinds) and kinds[i] in KINDS else "concept"
        terms.append(_term(category_id, op, _float(mins[i] if i < len(mins) else None), kind))
    if len(terms) > MAX_TERMS:
        errors.append(f"At most {MAX_TERMS} terms; the rest were dropped.")
        terms = terms[:MAX_TERMS]
    return Query(tuple(terms), parse_filters(params), tuple(errors))
