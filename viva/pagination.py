"""API pagination, in its own module: DRF imports the default pagination class while it is
still loading its own viewsets, so this module must not import any view code."""

from rest_framework.pagination import LimitOffsetPagination


class ApiPagination(LimitOffsetPagination):
    """``?limit=&offset=``: at most :attr:`max_limit` rows per request."""

    default_limit = 100
    max_limit = 1000
