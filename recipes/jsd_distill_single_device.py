# Entry point: python recipes/jsd_distill_single_device.py --config ...
# (with tune: tune run jsd_loss/recipes/jsd_distill_single_device.py --config ...; see jsd_loss/recipes/__init__.py)
import sys

from jsd_loss.recipes.jsd_distill_single_device import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main())
