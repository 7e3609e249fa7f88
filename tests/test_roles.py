"""Walk every URL of the project as anonymous and as each role (DESIGN.md section 8).

The expected minimum role of each URL lives in ``tests/url_roles_<app>.py`` tables (format:
see the docstring of ``tests/url_roles_viva.py``); every such module is picked up
automatically. A URL without an entry fails, so the tables grow with the project.

Skipped, on purpose:
- ``django-admin/``: Django's admin has its own staff/permission system (tested by Django);
  ``test_django_admin_needs_staff`` checks that it is not open.
- static files: not part of the URLconf (served by nginx or ``runserver`` in debug). Media
  *is* in the URLconf here (``media``) and is walked like any other page.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.views import APIView

from viva.roles import RoleRequiredMixin

ROLE_ORDER = ["researcher", "annotator", "trainer", "admin"]
SKIPPED_PREFIXES = ("django-admin/",)
TABLES_DIR = Path(__file__).parent
HOW_TO = "Add an entry to tests/url_roles_<app>.py (format: docstring of tests/url_roles_viva.py)."


@dataclass
class Route:
    name: str | None
    routes: list[str] = field(default_factory=list)
    view_class: type | None = None
    has_format_suffix: bool = False


def _join(namespace: str | None, name: str | None) -> str | None:
    if name is None:
        return None
    return f"{namespace}:{name}" if namespace else name


def _walk(patterns, prefix: str = "", namespace: str | None = None) -> Iterator[tuple]:
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            ns = p.namespace
            inner = f"{namespace}:{ns}" if namespace and ns else (ns or namespace)
            yield from _walk(p.url_patterns, route, inner)
        elif isinstance(p, URLPattern):
            yield route, _join(namespace, p.name), p.callback


def project_routes() -> dict[str, Route]:
    """URL name → Route, for every pattern outside SKIPPED_PREFIXES.

    DRF's format-suffix twins (``collections.json``) share their name with the plain route
    and are walked together with it. Unnamed patterns are keyed ``<unnamed> route``."""
    found: dict[str, Route] = {}
    for route, name, callback in _walk(get_resolver().url_patterns):
        if route.lstrip("^").startswith(SKIPPED_PREFIXES):
            continue
        key = name or f"<unnamed> {route}"
        entry = found.setdefault(key, Route(name))
        entry.routes.append(route)
        entry.view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
        if re.search(r"\(\?P<format>|<(\w+:)?format>", route):
            entry.has_format_suffix = True
    return found


def load_tables() -> tuple[dict[str, dict], dict[str, Callable], list[str]]:
    """All EXPECTED entries, the make_objects of the module each came from, and problems."""
    expected: dict[str, dict] = {}
    makers: dict[str, Callable] = {}
    problems: list[str] = []
    for path in sorted(TABLES_DIR.glob("url_roles_*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        for name, entry in module.EXPECTED.items():
            if name in expected:
                problems.append(f"{name!r} is listed twice (again in {path.name}).")
            expected[name] = entry
            makers[name] = module.make_objects
    return expected, makers, problems


ROUTES = project_routes()
EXPECTED, MAKERS, TABLE_PROBLEMS = load_tables()


def _value(spec, objects):
    return spec(objects) if callable(spec) else dict(spec or {})


def _is_api(route: Route) -> bool:
    cls = route.view_class
    return bool(cls and issubclass(cls, APIView) and not issubclass(cls, RoleRequiredMixin))


def _check(response, outcome: str, ok: tuple[int, ...], public: bool) -> str | None:
    """None if the response matches the expected outcome, else a description."""
    code = response.status_code
    location = response.get("Location", "")
    to_login = code == 302 and location.startswith(reverse("login"))
    if outcome == "login":
        return None if to_login else f"expected a redirect to the login page, got {code}"
    if outcome == "denied":
        return None if code in (401, 403) else f"expected 401/403, got {code}"
    if outcome == "forbidden":
        return None if code == 403 else f"expected 403, got {code} {location}".rstrip()
    if code not in ok:
        return f"expected {ok}, got {code} {location}".rstrip()
    if to_login and not public:
        return f"expected access, got a redirect to the login page ({location})"
    return None


def _request(client: Client, method: str, url: str, data) -> object:
    if method == "POST":
        return client.post(url, data)
    return client.get(url)


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_url_roles(name, users, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    route = ROUTES[name]
    if route.name is None:
        pytest.fail(f"The pattern {route.routes[0]!r} has no name: name it, then {HOW_TO}")
    if name not in EXPECTED:
        pytest.fail(f"No expected role for URL {name!r} ({route.routes[0]}). {HOW_TO}")
    entry = EXPECTED[name]
    unknown = set(entry) - {"role", "method", "kwargs", "data", "ok", "anonymous", "why"}
    assert not unknown, f"{name}: unknown keys {unknown}"
    role = entry["role"]
    assert role is None or role in ROLE_ORDER, f"{name}: unknown role {role!r}"
    method = entry.get("method", "GET").upper()
    ok = tuple(entry.get("ok") or ((200,) if method == "GET" else (200, 302)))
    public = role is None
    anonymous = entry.get("anonymous") or (
        "ok" if public else "denied" if _is_api(route) else "login"
    )
    minimum = -1 if public else ROLE_ORDER.index(role)

    problems: list[str] = []
    for who in ["anonymous", *ROLE_ORDER]:
        if who == "anonymous":
            outcome = anonymous
        else:
            outcome = "ok" if ROLE_ORDER.index(who) >= minimum else "forbidden"
        with transaction.atomic():
            objects = MAKERS[name](users)
            kwargs = _value(entry.get("kwargs"), objects)
            data = _value(entry.get("data"), objects)
            urls = [reverse(name, kwargs=kwargs)]
            if route.has_format_suffix:
                urls.append(reverse(name, kwargs={**kwargs, "format": "json"}))
            for url in urls:
                client = Client()
                if who != "anonymous":
                    client.force_login(users[who])
                try:
                    response = _request(client, method, url, data)
                except Exception as exc:  # noqa: BLE001 - report every role, not the first
                    problems.append(f"{who}: {method} {url} raised {type(exc).__name__}: {exc}")
                    continue
                problem = _check(response, outcome, ok, public)
                if problem:
                    problems.append(f"{who}: {method} {url}: {problem}")
            transaction.set_rollback(True)
    why = f" ({entry['why']})" if entry.get("why") else ""
    assert not problems, f"{name} needs {role or 'no role'}{why}:\n" + "\n".join(problems)


def test_tables_are_consistent():
    stale = sorted(set(EXPECTED) - set(ROUTES))
    assert not TABLE_PROBLEMS, TABLE_PROBLEMS
    assert not stale, f"Entries for URLs that no longer exist (remove them): {stale}"


def test_walk_finds_namespaced_and_router_urls():
    """Guards the walker itself: it must see includes, namespaces and DRF routes."""
    for name in ("home", "jobs:detail", "archive:video", "job-list", "job-cancel", "api-root"):
        assert name in ROUTES, name
    assert ROUTES["job-list"].has_format_suffix
    assert not ROUTES["jobs:detail"].has_format_suffix
    assert not any(r.startswith("django-admin/") for route in ROUTES.values() for r in route.routes)


def test_django_admin_needs_staff(client_for, client):
    response = client.get("/django-admin/")
    assert response.status_code == 302 and "login" in response["Location"]
    # Roles are not Django staff: even a VIVA admin gets the admin's own login page.
    response = client_for("admin").get("/django-admin/")
    assert response.status_code == 302 and "login" in response["Location"]
