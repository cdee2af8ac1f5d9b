# Entry point: python recipes/jsd_distill_distributed.py --config ...
# (with tune: tune run jsd_loss/recipes/jsd_distill_distributed.py --config ...; see jsd_loss/recipes/__init__.py)
import sys

from jsd_loss.recipes.jsd_distill_distributed import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main())
