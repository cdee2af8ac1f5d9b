# Makes `recipes` importable as a package from the repository root, ahead of the
# `recipes` package torchtune installs into site-packages: run `tune run recipes/...`
# with PYTHONPATH=. (a known torchtune limitation, pytorch/torchtune#1760), or
# `python recipes/<recipe>.py --config ...`.
