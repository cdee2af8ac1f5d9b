# Entry point: python recipes/eval_distill.py --config ...
# (with tune: tune run jsd_loss/recipes/eval_distill.py --config ...; see jsd_loss/recipes/__init__.py)
import sys

from jsd_loss.recipes.eval_distill import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main())
