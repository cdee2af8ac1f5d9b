# Thin entry points; the recipes live in jsd_loss/recipes/ (run them with
# `tune run jsd_loss/recipes/<name>.py --config ...`, no PYTHONPATH needed).
# This file keeps the older form `PYTHONPATH=. tune run recipes/<name>.py ...` working:
# with PYTHONPATH=. this package shadows the `recipes` package torchtune installs.
