"""The eval set: prompts and reference responses from any JSONL (or the Dolly eval split)."""

from collections import defaultdict
from typing import Dict, List, Optional

from jsd_loss.datasets import is_eval_row, load_rows

Example = Dict[str, str]  # instruction, context, response, category


def load_examples(
    source: str,
    split: Optional[str] = None,
    max_rows: Optional[int] = None,
    instruction_field: str = "instruction",
    context_field: str = "context",
    response_field: str = "response",
    category_field: str = "category",
) -> List[Example]:
    """
    Eval examples from ``source`` (a JSONL file, or a hub dataset id with hub access).

    Args:
        source (str): where the rows are.
        split (Optional[str]): ``"eval"`` keeps the fixed held-out Dolly eval split (never
            seen in training); None keeps every row. Default: None
        max_rows (Optional[int]): keep this many, taking categories in turn (see
            :func:`round_robin_by_category`). Default: None (all)
        instruction_field (str): field of the instruction. Default: "instruction"
        context_field (str): field of the optional context. Default: "context"
        response_field (str): field of the reference response. Default: "response"
        category_field (str): field of the optional category ("all" when absent). Default: "category"

    Returns:
        List[Example]: dicts with keys instruction, context, response, category.

    Raises:
        ValueError: if a row lacks a required field, context/category are not strings, or
            the set is empty.
    """
    fields = {"instruction": instruction_field, "context": context_field, "response": response_field,
              "category": category_field}
    rows = load_rows(source, fields=[instruction_field, response_field])
    examples = []
    for row in rows:
        ex = {k: row.get(f, "") if k in ("context", "category") else row[f] for k, f in fields.items()}
        if not isinstance(ex["context"], str) or not isinstance(ex["category"], str):
            raise ValueError(f"{source}: context/category fields must be strings")
        ex["category"] = ex["category"] or "all"
        examples.append(ex)
    if split == "eval":
        examples = [e for e in examples if is_eval_row(e)]
    if max_rows:
        examples = round_robin_by_category(examples, max_rows)
    if not examples:
        raise ValueError(f"the eval set from {source} is empty")
    return examples


def round_robin_by_category(examples: List[Example], n: int) -> List[Example]:
    """The first ``n`` examples taken in turn from each category (in file order), so a
    subset of a category-sorted file still covers every category."""
    groups: Dict[str, List] = defaultdict(list)
    for ex in examples:
        groups[ex["category"]].append(ex)
    picked, queues = [], [list(g) for g in groups.values()]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked
