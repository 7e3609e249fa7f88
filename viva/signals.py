"""Project signals.

* Every user gets a profile (role researcher) so role checks never hit a missing row.
* :data:`images_added` tells the apps that images arrived (imports, acquisition), so hash
  codes and faces are computed in the background without ``viva`` importing any app.
"""

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import Signal, receiver

from .models import Profile


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def ensure_profile(sender, instance, created: bool, **kwargs) -> None:
    if created:
        Profile.objects.get_or_create(user=instance)


#: Sent (after the transaction commits) when images were added to the archive or proposed
#: for a category. Keyword arguments: ``image_ids`` (list of int), ``category_id`` (int or
#: None: an archive import), ``source`` (str). Receivers must be quick (start a job) and
#: must not raise: a failing receiver is logged, never undoes the import.
images_added = Signal()


def send_images_added(image_ids, *, category_id: int | None = None, source: str = "") -> None:
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    if not ids:
        return

    def send() -> None:
        images_added.send_robust(sender=None, image_ids=ids, category_id=category_id, source=source)
        # send_robust returns (receiver, exception) pairs; errors are logged by receivers.

    transaction.on_commit(send)
