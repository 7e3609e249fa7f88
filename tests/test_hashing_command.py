"""``manage.py train_hashing``: options, synchronous runs and starting jobs."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from tests.test_grid_views import make_stills
from tests.test_hashing_train import shape_folder
from training.registry import active_version
from viva.models import Job

TINY = ["--network", "tiny-cnn", "--image-size", "64", "--device", "cpu"]


def test_conflicting_options_are_refused(db):
    with pytest.raises(CommandError, match="takes no --folder"):
        call_command("train_hashing", "--itq", "--folder", "/tmp")
    with pytest.raises(CommandError, match="either --folder or --categories"):
        call_command("train_hashing", "--folder", "/tmp", "--categories", "1")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("train_hashing", "--folder", "/no/such/folder", "--sync", *TINY)


def test_itq_sync_saves_an_active_version(db, tmp_path, capsys):
    make_stills(4, tmp_path)
    call_command("train_hashing", "--itq", "--sync", "--init", "random", *TINY)
    version = active_version("hashing")
    assert version is not None and version.config["method"] == "itq"
    out = capsys.readouterr().out
    assert f"Saved {version}" in out and "Re-index the archive" in out


def test_folder_starts_a_deep_hashing_job(db, tmp_path, django_capture_on_commit_callbacks):
    folder = shape_folder(tmp_path, 3)
    with django_capture_on_commit_callbacks(execute=False):
        call_command(
            "train_hashing",
            "--folder",
            str(folder),
            "--epochs",
            "2",
            "--min-positives",
            "3",
            "--init",
            "random",
            *TINY,
        )
    job = Job.objects.get()
    assert job.kind == "train_hashing" and job.queue == "gpu"
    assert job.params["folder"] == str(folder.resolve()) and job.params["epochs"] == 2
