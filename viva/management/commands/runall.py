"""``manage.py runall``: the web server and a Celery worker together, for one machine.

Why: the embedded setup (DESIGN.md section 3) must come up with one command and go down
with one Ctrl-C. Both children run in their own process groups so a signal reaches every
process they started (runserver's reloader, Celery's pool) and nothing is left behind;
when either child exits, the other is stopped too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

QUEUES = "default,io,gpu"


class Command(BaseCommand):
    help = "Run the web server and a Celery worker (all queues) together; Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument(
            "--addr",
            default="127.0.0.1:8000",
            help="ip:port of the web server (default %(default)s: this machine only).",
        )
        parser.add_argument("--concurrency", type=int, default=2, help="Worker processes.")
        parser.add_argument("--queues", default=QUEUES, help="Worker queues (%(default)s).")
        parser.add_argument("--loglevel", default="info", help="Worker log level.")
        parser.add_argument(
            "--reload",
            action="store_true",
            help="Restart the web server when code changes (the worker is not restarted).",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=15.0,
            help="Seconds to let a running job stop cleanly on Ctrl-C before killing it.",
        )

    def handle(
        self,
        *args,
        addr: str,
        concurrency: int,
        queues: str,
        loglevel: str,
        reload: bool,
        grace: float,
        **options,
    ):
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"--addr must look like 127.0.0.1:8000, not {addr!r}.")
        if _port_in_use(host, int(port)):
            raise CommandError(
                f"Port {port} on {host} is in use already: is VIVA running? "
                "Pick another with --addr (make run ADDR=127.0.0.1:8001)."
            )
        manage = str(settings.BASE_DIR / "manage.py")
        web_cmd = [sys.executable, manage, "runserver", addr, "--insecure"]
        if not reload:
            web_cmd.append("--noreload")
        worker_cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "viva",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-l",
            loglevel,
            "-n",
            f"viva-{os.getpid()}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
        env = os.environ.copy()
        env.setdefault("DJANGO_SETTINGS_MODULE", "viva.settings")
        env["PYTHONUNBUFFERED"] = "1"

        stopping = {"count": 0}

        def on_signal(signum, frame):
            stopping["count"] += 1

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, on_signal)

        children: dict[str, subprocess.Popen] = {}
        try:
            children["worker"] = subprocess.Popen(
                worker_cmd, env=env, cwd=settings.BASE_DIR, start_new_session=True
            )
            children["web"] = subprocess.Popen(
                web_cmd, env=env, cwd=settings.BASE_DIR, start_new_session=True
            )
            url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"
            announced = False
            deadline = time.monotonic() + 60
            while not stopping["count"]:
                dead = [name for name, p in children.items() if p.poll() is not None]
                if dead:
                    name = dead[0]
                    self.stderr.write(
                        f"The {name} process exited (code {children[name].returncode}); "
                        "stopping the other one."
                    )
                    break
                if not announced and _port_in_use(host, int(port)):
                    announced = True
                    self._announce(url, queues, concurrency)
                elif not announced and time.monotonic() > deadline:
                    announced = True
                    self.stderr.write(f"The web server is slow to start; try {url} soon.")
                time.sleep(0.3)
        finally:
            self._stop(children, grace, stopping)
        codes = [p.returncode for p in children.values()]
        if not stopping["count"] and any(codes):
            raise CommandError("VIVA stopped because a process failed (see its output above).")

    def _announce(self, url: str, queues: str, concurrency: int) -> None:
        bar = "-" * 64
        self.stdout.write(self.style.SUCCESS(bar))
        self.stdout.write(self.style.SUCCESS(f"VIVA is running at {url}"))
        self.stdout.write(
            f"Worker: {concurrency} processes on the queues {queues}. "
            "Ctrl-C stops web server and worker."
        )
        self.stdout.write(self.style.SUCCESS(bar))

    def _stop(self, children: dict[str, subprocess.Popen], grace: float, stopping) -> None:
        """SIGTERM both (Celery: warm shutdown), wait ``grace`` s, then SIGKILL their groups.

        A second Ctrl-C skips the wait. An interrupted job is marked failed by the
        heartbeat check and can be resumed from the jobs page.
        """
        alive = {n: p for n, p in children.items() if p.poll() is None}
        if not alive:
            return
        self.stdout.write("Stopping " + " and ".join(alive) + " …")
        first = stopping["count"]
        for proc in alive.values():
            # The leaders only: Celery's main process shuts its pool down itself (warm
            # shutdown); a SIGTERM to the pool children would kill the running job at once.
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in alive.values()):
            if stopping["count"] > first:
                self.stdout.write("Forced stop.")
                break
            time.sleep(0.2)
        for name, proc in alive.items():
            if proc.poll() is None:
                self.stdout.write(f"Killing the {name} (it did not stop in time).")
                _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            # Whatever the leader left behind in its group (pool children) goes too.
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _port_in_use(host: str, port: int) -> bool:
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")
    try:
        with socket.create_connection((probe_host, port), timeout=0.3):
            return True
    except OSError:
        return False
