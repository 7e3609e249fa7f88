"""JSON endpoints of the grid: save a batch of labels, remember rows × columns.

Save protocol (the grid component's contract, also used by other pages with their
own ``save_url``)::

    POST {"category": 7, "source": "grid",
          "labels": [{"key": "123", "value": 1}, {"key": "124", "value": null}]}
    200  {"saved": 2, "created": 1, "updated": 0, "removed": 1, "unchanged": 0,
          "rejected": [{"key": "999", "error": "This image no longer exists."}],
          "labels": {"123": 1, "124": null}}
    400 / 403 / 409 / 503  {"error": "a message for the user"}

Everything goes through :func:`annotation.labels.save_labels` (one transaction, event
per change). Errors are JSON, never an HTML page or a login redirect, so the page
can show them and keep the labels for a retry.
"""

from __future__ import annotations

import json
import logging

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, IntegrityError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.views import View

from viva.roles import Role, RoleRequiredMixin

from ..grid import save_grid_size
from ..labels import MAX_BATCH, LabelError, parse_value, save_face_labels, save_labels
from ..models import Source

logger = logging.getLogger(__name__)

# Sources a page may claim; "delete" is reserved for category deletion.
CLIENT_SOURCES = set(Source.values) - {Source.DELETE}


def error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


class JsonRoleMixin(RoleRequiredMixin):
    """Role check that answers JSON 403 (also when logged out) instead of a redirect."""

    raise_exception = True

    def dispatch(self, request: HttpRequest, *args, **kwargs):
        try:
            return super().dispatch(request, *args, **kwargs)
        except PermissionDenied as exc:
            if not request.user.is_authenticated:
                return error("You are logged out. Log in again (in another tab) and retry.", 403)
            return error(str(exc) or "Your role does not allow this.", 403)

    def http_method_not_allowed(self, request, *args, **kwargs):
        response = error("Use POST.", 405)
        response["Allow"] = ", ".join(m.upper() for m in self._allowed_methods())
        return response


class BadPayload(Exception):
    """A grid save request that cannot be read; the message is for the user."""


def read_grid_payload(request: HttpRequest, max_labels: int) -> tuple[dict, list]:
    """The JSON object of a grid save and its ``labels`` list, checked for shape.

    Shared by every ``save_url`` of the grid contract so they refuse bad requests alike.
    """
    try:
        payload = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadPayload("The request was not valid JSON.") from None
    if not isinstance(payload, dict):
        raise BadPayload("Expected a JSON object.")
    labels = payload.get("labels")
    if not isinstance(labels, list):
        raise BadPayload("Expected a list of labels.")
    if len(labels) > max_labels:
        raise BadPayload(f"At most {max_labels} labels can be saved at once.")
    if any(not isinstance(entry, dict) or "key" not in entry for entry in labels):
        raise BadPayload("Each label needs a key and a value.")
    return payload, labels


def save_batch(
    labels: list,
    category_id: int,
    user,
    source: str,
    *,
    faces: bool,
    bad_key: str | None = None,
) -> JsonResponse:
    """Save a checked ``labels`` list (keys = image ids, or face ids when ``faces``) and
    answer with the grid contract: per-key rejections, the labels as saved, and a message
    for the user when the whole batch failed (the page keeps the labels for a retry)."""
    what = "face" if faces else "image"
    rejected: list[dict] = []
    changes: list[tuple[int, int | None]] = []
    keys: dict[int, str] = {}
    for entry in labels:
        key = str(entry["key"])
        try:
            item_id = int(key)
        except ValueError:
            error_text = bad_key or ("Not a face." if faces else "Not an archive image.")
            rejected.append({"key": key, "error": error_text})
            continue
        try:
            value = parse_value(entry.get("value"))
        except LabelError as exc:
            rejected.append({"key": key, "error": str(exc)})
            continue
        changes.append((item_id, value))
        keys[item_id] = key

    save = save_face_labels if faces else save_labels
    try:
        result = save(category_id, changes, user=user, source=source)
    except LabelError as exc:
        # The category was deleted meanwhile (or the batch is too large).
        message = str(exc)
        return error(message.replace("category", "person") if faces else message, 409)
    except IntegrityError:
        return error(
            f"Another annotator saved the same {what}s at the same moment; please save again.",
            409,
        )
    except OperationalError:
        logger.warning("saving %s labels: database busy", what, exc_info=True)
        return error("The database is busy; your labels are kept — please retry.", 503)
    except DatabaseError:
        logger.exception("saving %s labels failed", what)
        return error("The labels could not be saved (database error); please retry.", 500)

    for item in result.rejected:
        item_id = item[what]
        rejected.append({"key": keys.get(item_id, str(item_id)), "error": item["error"]})
    bad = {r["key"] for r in rejected}
    data = result.as_dict()
    data["rejected"] = rejected
    data["labels"] = {keys[i]: v for i, v in changes if keys[i] not in bad}
    return JsonResponse(data)


class SaveLabelsView(JsonRoleMixin, View):
    """``annotation:save_labels``: a batch of archive-image labels (keys are image ids)."""

    min_role = Role.ANNOTATOR

    def post(self, request: HttpRequest):
        try:
            payload, labels = read_grid_payload(request, MAX_BATCH)
        except BadPayload as exc:
            return error(str(exc), 400)
        try:
            category_id = int(payload.get("category"))
        except (TypeError, ValueError):
            return error("No category given; select a category and retry.", 400)
        source = payload.get("source") or Source.GRID
        if source not in CLIENT_SOURCES:
            return error(f"Unknown source {source!r}.", 400)

        return save_batch(labels, category_id, request.user, source, faces=False)


class GridPrefsView(JsonRoleMixin, View):
    """``annotation:grid_prefs``: POST rows and cols (1–10), stored in the user's profile."""

    min_role = Role.RESEARCHER

    def post(self, request: HttpRequest):
        data = request.POST
        if request.content_type == "application/json":
            try:
                data = json.loads(request.body or b"{}")
            except ValueError:
                return error("The request was not valid JSON.", 400)
            if not isinstance(data, dict):
                return error("Expected a JSON object.", 400)
        if "rows" not in data or "cols" not in data:
            return error("Send rows and cols.", 400)
        rows, cols = save_grid_size(request.user, data.get("rows"), data.get("cols"))
        return JsonResponse({"rows": rows, "cols": cols})
