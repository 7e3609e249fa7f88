"""``manage.py train_hashing``: fit unsupervised hash codes or train a deep hashing model.

    manage.py train_hashing --itq [--sample-size N]          # PCA + ITQ on archive images
    manage.py train_hashing [--categories ID ...]            # deep, labelled categories
    manage.py train_hashing --folder PATH                    # deep, image-folder dataset

``--folder`` takes a dataset with one subfolder per class (e.g. a large generic dataset
such as ImageNet + Places, as the thesis trains ElasticHash on). Without ``--sync`` the
command starts a job (the "Hash codes" page shows its progress) and prints its id; with
``--sync`` it runs here and prints the log.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from training.errors import TrainingError, TrainingRefused


class Command(BaseCommand):
    help = "Fit unsupervised (ITQ) hash codes or train a deep hashing model."

    def add_arguments(self, parser):
        parser.add_argument("--itq", action="store_true", help="Unsupervised ITQ codes.")
        parser.add_argument("--folder", help="Image-folder dataset: one subfolder per class.")
        parser.add_argument("--categories", nargs="+", type=int, help="Category ids.")
        parser.add_argument("--epochs", type=int, help="Deep hashing epochs (default 5).")
        parser.add_argument("--sample-size", type=int, default=20000, help="ITQ sample.")
        parser.add_argument("--min-positives", type=int, help="Images per class (default 20).")
        parser.add_argument("--batch-size", type=int, help="Batch size (default 128 / 64).")
        parser.add_argument("--network", help="Backbone (default efficientnet-b3).")
        parser.add_argument("--init", choices=["pretrained", "random"], help="Start weights.")
        parser.add_argument("--image-size", type=int, help="Input size in pixels.")
        parser.add_argument("--device", help="cpu, cuda:0 … (default: auto / cpu for jobs).")
        parser.add_argument("--num-workers", type=int, help="DataLoader workers.")
        parser.add_argument("--sync", action="store_true", help="Run here, not as a job.")

    def handle(self, *args, **opts):
        if opts["itq"] and (opts["folder"] or opts["categories"]):
            raise CommandError("--itq fits unsupervised codes; it takes no --folder/--categories.")
        if opts["folder"] and opts["categories"]:
            raise CommandError("Give either --folder or --categories, not both.")
        common = {
            k: opts[k]
            for k in ("network", "init", "image_size", "device", "batch_size", "num_workers")
            if opts.get(k) is not None
        }
        try:
            if opts["sync"]:
                version = self._run_here(opts, common)
                self.stdout.write(self.style.SUCCESS(f"Saved {version}; it is active."))
                self.stdout.write(
                    "Re-index the archive (similarity page) so search uses the new codes."
                )
            else:
                job = self._start_job(opts, common)
                self.stdout.write(
                    self.style.SUCCESS(f"Started job {job.pk} ({job.title}).")
                    + " Follow it on /retrieve/hashing/?job="
                    + str(job.pk)
                )
        except (TrainingError, TrainingRefused) as exc:
            raise CommandError(str(exc)) from exc

    def _run_here(self, opts, common):
        from training.trainer import NullContext

        from ...hashing.train import fit_itq_model, train_hashing_model

        ctx = NullContext(verbose=True)
        if opts["itq"]:
            return fit_itq_model(sample_size=opts["sample_size"], ctx=ctx, **common)
        deep = dict(common)
        for key in ("epochs", "min_positives"):
            if opts.get(key) is not None:
                deep[key] = opts[key]
        return train_hashing_model(
            category_ids=opts["categories"], folder=opts["folder"], ctx=ctx, **deep
        )

    def _start_job(self, opts, common):
        from ...hashing import service

        if opts["itq"]:
            return service.start_fit(None, {"sample_size": opts["sample_size"], **common})
        deep = dict(common)
        for key in ("epochs", "min_positives"):
            if opts.get(key) is not None:
                deep[key] = opts[key]
        if opts["folder"]:
            deep["folder"] = str(Path(opts["folder"]).resolve())
        elif opts["categories"]:
            deep["category_ids"] = opts["categories"]
        return service.start_deep(None, deep)
