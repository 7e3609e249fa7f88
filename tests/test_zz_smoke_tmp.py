import pytest
from django.urls import reverse
pytestmark = pytest.mark.django_db

def test_smoke(client_for):
    c = client_for("admin")
    for name in ("training:train", "training:overview", "training:models", "training:evaluation"):
        r = c.get(reverse(name))
        assert r.status_code == 200, (name, r.content[:2000])
