"""User management for admins: create users, set roles, deactivate."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.shortcuts import get_object_or_404, redirect
from django.views.generic import FormView, TemplateView

from ..models.users import Profile, Role
from ..roles import RoleRequiredMixin

User = get_user_model()


class NewUserForm(UserCreationForm):
    role = forms.TypedChoiceField(choices=Role.choices, coerce=int, initial=Role.ANNOTATOR)

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")


class EditUserForm(forms.Form):
    role = forms.TypedChoiceField(choices=Role.choices, coerce=int)
    is_active = forms.BooleanField(required=False, label="Active (may log in)")


class UserListView(RoleRequiredMixin, TemplateView):
    min_role = Role.ADMIN
    template_name = "viva/users.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["users"] = User.objects.select_related("profile").order_by("username")
        return ctx


class UserCreateView(RoleRequiredMixin, FormView):
    min_role = Role.ADMIN
    template_name = "viva/user_form.html"
    form_class = NewUserForm

    def form_valid(self, form):
        user = form.save()
        Profile.objects.update_or_create(user=user, defaults={"role": form.cleaned_data["role"]})
        messages.success(self.request, f"User {user.username} created.")
        return redirect("users:list")


class UserEditView(RoleRequiredMixin, FormView):
    min_role = Role.ADMIN
    template_name = "viva/user_form.html"
    form_class = EditUserForm

    def dispatch(self, request, *args, **kwargs):
        self.target = get_object_or_404(User, pk=kwargs["pk"])
        return super().dispatch(request, *args, **kwargs)

    def get_initial(self):
        profile, _ = Profile.objects.get_or_create(user=self.target)
        return {"role": profile.role, "is_active": self.target.is_active}

    def get_context_data(self, **kwargs):
        return super().get_context_data(target=self.target, **kwargs)

    def form_valid(self, form):
        if self.target == self.request.user and (
            form.cleaned_data["role"] < Role.ADMIN or not form.cleaned_data["is_active"]
        ):
            form.add_error(None, "You cannot remove your own admin rights or deactivate yourself.")
            return self.form_invalid(form)
        Profile.objects.update_or_create(
            user=self.target, defaults={"role": form.cleaned_data["role"]}
        )
        self.target.is_active = form.cleaned_data["is_active"]
        self.target.save(update_fields=["is_active"])
        messages.success(self.request, f"User {self.target.username} updated.")
        return redirect("users:list")
