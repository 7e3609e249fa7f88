"""URLs of labelling: categories and selection, the label grid, review, grid endpoints."""

from django.urls import path

from .views import categories, grid, label_api, review

urlpatterns = [
    path("categories/", categories.CategoryListView.as_view(), name="categories"),
    path("categories/new/", categories.CategoryCreateView.as_view(), name="category_create"),
    path("categories/select/", categories.CategorySelectView.as_view(), name="category_select"),
    path("categories/<int:pk>/edit/", categories.CategoryEditView.as_view(), name="category_edit"),
    path(
        "categories/<int:pk>/delete/",
        categories.CategoryDeleteView.as_view(),
        name="category_delete",
    ),
    path("label/", grid.LabelView.as_view(), name="label"),
    path("review/", review.ReviewView.as_view(), name="review"),
    path("labels/save/", label_api.SaveLabelsView.as_view(), name="save_labels"),
    path("grid/prefs/", label_api.GridPrefsView.as_view(), name="grid_prefs"),
]
