"""The distillation recipes' shared core: both recipes subclass it, neither imports the other,
and each defines every hook the core leaves to it."""

import ast
from pathlib import Path

import pytest

import jsd_loss
from jsd_loss.recipes.jsd_distill_distributed import KDRecipeDistributed
from jsd_loss.recipes.jsd_distill_single_device import KDRecipeSingleDevice
from jsd_loss.training import KDRecipeBase

PACKAGE = Path(jsd_loss.__file__).parent

# what distribution changes, per the core's comment: a recipe must say each
HOOKS = ("_not_implemented", "_build_on_meta", "_load_weights", "_check_model", "_full_state_dict",
         "_optimizer_state_dict", "_load_optimizer_state_dict", "_barrier", "_all_ranks", "_rank_hooks")


def _imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_recipe(path):
    """What two recipes share lives in jsd_loss.training; the package below the recipes never
    reaches up into them, and a recipe never imports another."""
    recipes = [m for m in _imported_modules(path) if m.startswith("jsd_loss.recipes.")]
    assert recipes == [], f"{path.relative_to(PACKAGE)} imports {recipes}"


@pytest.mark.parametrize("recipe", [KDRecipeSingleDevice, KDRecipeDistributed], ids=["single", "distributed"])
def test_each_recipe_defines_every_hook_of_the_core(recipe):
    assert issubclass(recipe, KDRecipeBase)
    missing = [hook for hook in HOOKS if hook not in vars(recipe)]
    assert missing == []
    assert not any(hook in vars(KDRecipeBase) for hook in HOOKS)  # the core has no single-process default
