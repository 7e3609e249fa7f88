"""Pages of concept training (issue 4): dataset overview, one-click training with live
monitoring, model registry, evaluation against the previous version.

Roles (enforced by :class:`viva.roles.RoleRequiredMixin`; the same as the menu in
``viva/context.py`` where the menu lists the page):

* **annotator** — the dataset overview. It is read-only and it is the annotators' to-do
  list: it shows which concepts still lack positives before they can be trained.
* **trainer** — everything else: the train page (starting and cancelling runs uses
  compute for everyone), the model list and activation (changes what inference and
  retrieval use for every user), and the evaluation page (the menu lists "Evaluation"
  for trainers; it is the trainer's decision tool for activation, and menu and URL
  checks must agree — a defect of the original VIVA).
"""
