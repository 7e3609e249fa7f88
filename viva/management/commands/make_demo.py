"""``manage.py make_demo``: build the offline demo archive and a demo admin (idempotent)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ...demo import DEMO_ADMIN, build_demo


class Command(BaseCommand):
    help = (
        "Build a small demo archive offline (synthetic videos with known cuts, plus stills) "
        "and a demo admin whose password is printed once. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="Build the archive only when it has no videos yet (used by `make run`).",
        )
        parser.add_argument(
            "--no-user", action="store_true", help=f"Do not create the demo user {DEMO_ADMIN!r}."
        )
        parser.add_argument(
            "--role-users",
            action="store_true",
            help="Also create the users researcher, annotator and trainer (random passwords).",
        )
        parser.add_argument(
            "--no-worker-job",
            action="store_true",
            help="Do not queue the short 'worker check' job that shows the worker running.",
        )

    def handle(
        self, *args, if_empty=False, no_user=False, role_users=False, no_worker_job=False, **options
    ):
        report = build_demo(
            say=self.stdout.write,
            with_admin=not no_user,
            with_role_users=role_users,
            if_empty=if_empty,
            worker_job=not no_worker_job,
        )
        if not report.skipped:
            self.stdout.write(
                f"Demo archive: {report.videos_imported} videos and {report.stills_imported} "
                "stills imported now."
            )
        if report.worker_job_id:
            self.stdout.write(
                f"Queued job #{report.worker_job_id} (worker check); a running worker picks it up."
            )
        if report.index_job_id:
            self.stdout.write(
                f"Queued job #{report.index_job_id}: hash codes and the similarity index of "
                "the demo archive."
            )
        passwords = {}
        if report.admin_password:
            passwords[DEMO_ADMIN] = report.admin_password
        passwords.update(report.user_passwords or {})
        if passwords:
            bar = "=" * 64
            self.stdout.write(self.style.SUCCESS(bar))
            self.stdout.write(
                self.style.SUCCESS("Demo users created. The passwords are shown ONCE:")
            )
            for name, password in passwords.items():
                self.stdout.write(self.style.SUCCESS(f"    user {name:<12} password {password}"))
            self.stdout.write(
                self.style.SUCCESS("Lost one? python manage.py changepassword <user>")
            )
            self.stdout.write(self.style.SUCCESS(bar))
        elif not no_user:
            self.stdout.write(
                f"The demo user {DEMO_ADMIN!r} exists already (its password was printed when it "
                f"was created; `python manage.py changepassword {DEMO_ADMIN}` sets a new one)."
            )
        if report.errors:
            raise CommandError(f"The demo archive is incomplete: {report.errors} file(s) failed.")
