"""Category pages: the overview per kind, create, edit, delete, select.

Roles (the same checks as the menu in ``viva/context.py``):

* researcher: view the overview and select a category — selecting only touches the
  user's own session, and read-only pages (retrieval) may work on the selection;
* annotator: create and edit (rename, description) — part of collecting data;
* trainer: delete — it removes training data for every user and model, so it is
  kept for the people who manage models (the labels are archived as events anyway).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.db.models import Count
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View
from django.views.generic import FormView, TemplateView

from viva.roles import Role, RoleRequiredMixin, has_role

from ..labels import delete_category
from ..models import Annotation, Candidate, Category, Label
from ..selection import clear_selected, get_selected, set_selected

KIND_TITLES = {Category.Kind.CONCEPT: "Concepts", Category.Kind.PERSON: "Persons"}


def _kind(request: HttpRequest, default: str = Category.Kind.CONCEPT) -> str:
    kind = request.GET.get("kind") or request.POST.get("kind") or default
    return kind if kind in Category.Kind.values else default


def safe_next(request: HttpRequest, fallback: str) -> str:
    """The ``next`` parameter when it points at this site, else ``fallback``."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return fallback


def label_counts(categories: list[Category]) -> dict[int, dict[int, int]]:
    """Positive/negative/neutral counts of many categories, not one query per row.

    Two grouped queries: image-level labels ``GROUP BY category, value`` over the
    partial ``annotation_review`` index (an index-only scan), and face-level labels
    (persons) over ``annotation_unique_face``.
    """
    ids = [c.pk for c in categories]
    counts: dict[int, dict[int, int]] = {pk: {} for pk in ids}
    if not ids:
        return counts
    for faces in (False, True):
        rows = (
            Annotation.objects.filter(category_id__in=ids, face__isnull=not faces)
            .values_list("category_id", "value")
            .annotate(n=Count("id"))
            .order_by()
        )
        for category_id, value, n in rows:
            counts[category_id][value] = counts[category_id].get(value, 0) + n
    return counts


class CategoryListView(RoleRequiredMixin, TemplateView):
    """Overview table of one kind (tabs: concepts / persons) with label counts."""

    min_role = Role.RESEARCHER
    template_name = "annotation/categories.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        request = self.request
        selected = get_selected(request)
        kind = _kind(request, selected.kind if selected else Category.Kind.CONCEPT)
        categories = list(Category.objects.filter(kind=kind).order_by(Lower("name")))
        counts = label_counts(categories)
        for category in categories:
            c = counts[category.pk]
            category.n_pos = c.get(Label.POSITIVE, 0)
            category.n_neg = c.get(Label.NEGATIVE, 0)
            category.n_neu = c.get(Label.NEUTRAL, 0)
            category.n_total = category.n_pos + category.n_neg + category.n_neu
        ctx.update(
            kind=kind,
            kinds=[(k, KIND_TITLES[k]) for k in Category.Kind.values],
            kind_title=KIND_TITLES[kind],
            kind_label=Category.Kind(kind).label.lower(),
            categories=categories,
            selected=selected,
            next=safe_next(request, ""),
            can_edit=has_role(request.user, Role.ANNOTATOR),
            can_delete=has_role(request.user, Role.TRAINER),
        )
        return ctx


class CategoryForm(forms.ModelForm):
    class Meta:
        model = Category
        fields = ["kind", "name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            del self.fields["kind"]  # a concept does not turn into a person
        self.fields["name"].widget.attrs.update(autofocus=True, maxlength=200)

    def clean_name(self) -> str:
        name = " ".join(self.cleaned_data["name"].split())
        if not name:
            raise forms.ValidationError("A name is required.")
        kind = self.cleaned_data.get("kind") or self.instance.kind
        existing = Category.clash(kind, name, exclude_pk=self.instance.pk)
        if existing is not None:
            what = Category.Kind(kind).label.lower()
            raise forms.ValidationError(f"A {what} named “{existing.name}” exists already.")
        return name


class CategoryCreateView(RoleRequiredMixin, FormView):
    """New concept or person; it becomes the selected category right away."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/categories_form.html"
    form_class = CategoryForm

    def get_initial(self):
        return {"kind": _kind(self.request)}

    def form_valid(self, form):
        category = form.save(commit=False)
        category.created_by = self.request.user
        category.save()
        set_selected(self.request, category)
        messages.success(
            self.request,
            f"Created and selected the {category.get_kind_display().lower()} “{category.name}”.",
        )
        return redirect(f"{reverse('annotation:categories')}?kind={category.kind}")


class CategoryEditView(RoleRequiredMixin, FormView):
    """Rename and describe; labels stay attached (they reference the id)."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/categories_form.html"
    form_class = CategoryForm

    def dispatch(self, request, *args, **kwargs):
        self.object = None
        return super().dispatch(request, *args, **kwargs)

    def get_form_kwargs(self):
        if self.object is None:
            self.object = get_object_or_404(Category, pk=self.kwargs["pk"])
        return {**super().get_form_kwargs(), "instance": self.object}

    def get_context_data(self, **kwargs):
        return super().get_context_data(category=self.object, **kwargs)

    def form_valid(self, form):
        category = form.save()
        messages.success(self.request, f"Saved “{category.name}”.")
        return redirect(f"{reverse('annotation:categories')}?kind={category.kind}")


class CategoryDeleteView(RoleRequiredMixin, TemplateView):
    """Confirmation page with what goes with the category; POST deletes.

    The labels are archived as removal events by :func:`annotation.labels.delete_category`
    so the history survives; candidates (proposals, not labels) are simply dropped.
    """

    min_role = Role.TRAINER
    template_name = "annotation/categories_delete.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        category = get_object_or_404(Category, pk=kwargs["pk"])
        counts = label_counts([category])[category.pk]
        ctx.update(
            category=category,
            n_pos=counts.get(Label.POSITIVE, 0),
            n_neg=counts.get(Label.NEGATIVE, 0),
            n_neu=counts.get(Label.NEUTRAL, 0),
            n_total=sum(counts.values()),
            n_candidates=Candidate.objects.filter(category=category).count(),
        )
        return ctx

    def post(self, request, pk: int):
        category = get_object_or_404(Category, pk=pk)
        kind, name = category.kind, category.name
        archived = delete_category(category, user=request.user)
        clear_selected(request, pk)
        messages.success(
            request,
            f"Deleted “{name}”; its {archived} annotation(s) are kept in the event log.",
        )
        return redirect(f"{reverse('annotation:categories')}?kind={kind}")


class CategorySelectView(RoleRequiredMixin, View):
    """POST: make a category the selected one, then go back to ``next``."""

    min_role = Role.RESEARCHER

    def post(self, request, pk: int | None = None):
        raw = pk if pk is not None else request.POST.get("category")
        try:
            category = Category.objects.filter(pk=int(raw)).first()
        except (TypeError, ValueError):
            category = None
        if category is None:
            messages.error(request, "That category no longer exists.")
            return redirect("annotation:categories")
        set_selected(request, category)
        messages.success(request, f"Selected “{category.name}”.")
        fallback = f"{reverse('annotation:categories')}?kind={category.kind}"
        return HttpResponseRedirect(safe_next(request, fallback))
