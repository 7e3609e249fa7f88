"""URLs of this feature; included by the app's urls module."""

urlpatterns: list = []
