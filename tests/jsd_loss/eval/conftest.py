import pytest

from jsd_loss.eval import score_model

ROWS = [
    {"instruction": "What is the capital of France?", "context": "", "response": "Paris.", "category": "open_qa"},
    {"instruction": "Summarize.", "context": "The cat sat on the mat all day.", "response": "A cat sat.",
     "category": "summarization"},
    {"instruction": "Name a colour.", "context": "", "response": "Blue", "category": "open_qa"},
    {"instruction": "Extract the year.", "context": "It opened in 1889.", "response": "1889",
     "category": "information_extraction"},
    {"instruction": "Say hi", "context": "", "response": "Hi there!", "category": "open_qa"},
]


def _tf(n_tokens, nll, argmax):
    import torch

    return {"argmax": [torch.tensor(a) for a in argmax], "nll": nll, "n_tokens": n_tokens}


def _records(losses):
    return [{"step": i, "loss": l, "class_loss": 2 * l, "kd_loss": l / 2} for i, l in enumerate(losses, 1)]


@pytest.fixture
def entries():
    """Scored entries of a teacher, two seeds of "jsd" and one of "kl" on ROWS, by hand."""
    refs = [r["response"] for r in ROWS]
    teacher_tf = _tf([2, 2, 1, 1, 2], [1.0, 2.0, 0.5, 0.5, 1.0], [[1, 2], [3, 4], [5], [6], [7, 8]])
    models = [
        {"name": "teacher", "role": "teacher", "checkpoint_dir": "t", "records": None, "outputs": refs, "tf": teacher_tf},
        {"name": "jsd", "role": "student", "checkpoint_dir": "j0", "records": _records([4.0, 3.0, 2.0, 1.5]),
         "outputs": ["Paris", "A dog sat.", "Red", "1889", "Hello"],
         "tf": _tf([2, 2, 1, 1, 2], [2.0, 3.0, 1.0, 1.0, 2.0], [[1, 2], [3, 0], [5], [0], [7, 8]])},
        {"name": "jsd", "role": "student", "checkpoint_dir": "j1", "records": _records([4.0, 3.5, 2.5, 1.7]),
         "outputs": ["Paris.", "The cat.", "Blue", "It was 1889", "Hi"],
         "tf": _tf([2, 2, 1, 1, 2], [1.5, 3.0, 1.0, 0.5, 2.0], [[1, 2], [3, 4], [5], [6], [0, 8]])},
        {"name": "kl", "role": "student", "checkpoint_dir": "k", "records": _records([5.0, 4.0, 3.0, 2.0]),
         "outputs": ["London", "sat", "Green", "1890", "Hi there!"],
         "tf": _tf([2, 2, 1, 1, 2], [3.0, 3.0, 2.0, 2.0, 1.0], [[0, 2], [0, 0], [5], [0], [7, 0]])},
    ]
    return [score_model(m, refs, teacher_tf, ROWS, 0.05, 0.25) for m in models]
