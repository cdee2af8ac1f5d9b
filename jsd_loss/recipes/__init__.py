"""The recipes: one ``setup`` / ``train`` / ``cleanup`` class and a ``recipe_main`` per job.

Run a recipe by its path in this package, from anywhere the package is installed (no
PYTHONPATH; torchtune turns the path into the module ``jsd_loss.recipes.<name>``)::

    tune run jsd_loss/recipes/jsd_distill_single_device.py --config configs/smollm2/...
    tune run --nproc_per_node N jsd_loss/recipes/jsd_distill_distributed.py --config ...
    tune run jsd_loss/recipes/eval_distill.py --config configs/smollm2/eval_distill.yaml

``tune run recipes/<name>.py`` cannot work without PYTHONPATH: torchtune installs a
top-level ``recipes`` package of its own, which shadows the repository's ``recipes/``
directory (pytorch/torchtune#1760). The files there are thin entry points for
``python recipes/<name>.py --config ...``.

Nothing is imported here, so that ``tune run`` (``runpy``) executes each recipe module
exactly once.
"""
