"""Template context: the workflow menu, filtered by the user's role."""

from __future__ import annotations

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from .roles import Role, role_of

# (section, label, url name, minimum role). Entries whose URL does not exist yet are
# shown greyed out so the workflow is visible before every stage is built.
MENU: list[tuple[str, str, str, int]] = [
    ("Archive", "Overview", "home", Role.RESEARCHER),
    ("Archive", "Videos", "archive:collections", Role.RESEARCHER),
    ("Archive", "Import", "archive:upload", Role.TRAINER),
    ("Collect", "Categories", "annotation:categories", Role.RESEARCHER),
    ("Collect", "Web search", "annotation:crawl", Role.ANNOTATOR),
    ("Collect", "Similar images", "annotation:similar", Role.ANNOTATOR),
    ("Collect", "Upload / URL", "annotation:upload", Role.ANNOTATOR),
    ("Collect", "Sequence import", "annotation:sequence_import", Role.ANNOTATOR),
    ("Label", "Label grid", "annotation:label", Role.ANNOTATOR),
    ("Label", "Person clusters", "annotation:person_clusters", Role.ANNOTATOR),
    ("Review", "Review labels", "annotation:review", Role.ANNOTATOR),
    ("Train", "Dataset overview", "training:overview", Role.ANNOTATOR),
    ("Train", "Train concepts", "training:train", Role.TRAINER),
    ("Train", "Train persons", "training:persons", Role.TRAINER),
    ("Train", "Face detection", "training:faces", Role.TRAINER),
    ("Train", "Hash codes", "retrieval:hashing", Role.TRAINER),
    ("Train", "Model versions", "training:models", Role.TRAINER),
    ("Evaluate", "Evaluation", "training:evaluation", Role.TRAINER),
    ("Infer", "Inference", "training:inference", Role.TRAINER),
    ("Retrieve", "Ranked results", "retrieval:ranked", Role.RESEARCHER),
    ("Search", "Combined search", "retrieval:search", Role.RESEARCHER),
    ("Search", "Search by image", "retrieval:similar", Role.RESEARCHER),
    ("Search", "Search by face", "retrieval:faces", Role.RESEARCHER),
    ("Jobs", "Jobs", "jobs:list", Role.RESEARCHER),
    ("Admin", "Users", "users:list", Role.ADMIN),
]


def navigation(request: HttpRequest) -> dict:
    role = role_of(getattr(request, "user", None))
    if not role:
        return {}
    sections: dict[str, list[dict]] = {}
    for section, label, name, needed in MENU:
        if role < needed:
            continue
        try:
            url = reverse(name)
        except NoReverseMatch:
            url = None
        sections.setdefault(section, []).append(
            {"label": label, "url": url, "active": bool(url) and _is_active(request, url, name)}
        )
    return {"nav_sections": sections, "user_role": Role(role)}


def _is_active(request: HttpRequest, url: str, name: str) -> bool:
    if name == "home":
        return request.path == url
    return request.path.startswith(url)
