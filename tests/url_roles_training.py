"""Expected access of the training pages (issue 4); read by ``tests/test_roles.py``.

Format: see ``tests/url_roles_viva.py``. Why these roles: ``training.views`` docstring.
"""

from __future__ import annotations

from django.utils import timezone

from annotation.models import Category
from training.models import Evaluation, ModelVersion
from viva.models import Job


def make_objects(users: dict) -> dict:
    concept = Category.objects.create(name="Role walk concept")
    old = ModelVersion.objects.create(
        version=901,
        directory="concept/901",
        weights_path="concept/901/weights.pt",
        class_map=[{"index": 0, "id": concept.pk, "name": concept.name}],
        mean_ap=0.5,
    )
    new = ModelVersion.objects.create(
        version=902,
        directory="concept/902",
        weights_path="concept/902/weights.pt",
        class_map=[{"index": 0, "id": concept.pk, "name": concept.name}],
        mean_ap=0.75,
        previous=old,
        is_active=True,
    )
    for version, ap in ((old, 0.5), (new, 0.75)):
        Evaluation.objects.create(
            model_version=version,
            category=concept,
            category_name=concept.name,
            ap=ap,
            n_val_pos=3,
            n_val_neg=5,
            pr_curve={"precision": [0.5, 1.0], "recall": [1.0, 0.0]},
        )
    run = Job.objects.create(
        kind="train_concepts",
        title="Concept training on cpu",
        queue="gpu",
        status=Job.Status.RUNNING,
        heartbeat_at=timezone.now(),
        created_by=users["trainer"],
        params={"network": "tiny-cnn", "device": "cpu"},
        device="cpu",
        progress=3,
        total=10,
        metrics={"train loss": [[0.5, 0.9], [1.0, 0.7]], "val mAP": [[1, 0.6]]},
    )
    return {"old": old, "new": new, "run": run}


EXPECTED: dict[str, dict] = {
    "training:overview": {"role": "annotator", "why": "read-only to-do list of labelling"},
    "training:train": {"role": "trainer"},
    "training:models": {"role": "trainer"},
    "training:activate": {
        "role": "trainer",
        "method": "POST",
        "kwargs": lambda o: {"pk": o["old"].pk},
        "ok": (302,),
        "why": "changes the model every user's inference and retrieval use",
    },
    "training:evaluation": {"role": "trainer", "why": "the menu lists it for trainers"},
}
