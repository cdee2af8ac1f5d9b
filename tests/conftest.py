import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER" in os.environ:
    # one thread per worker (and per process it starts): the workers already fill the cores,
    # and more threads than cores on tiny models cost more than they give
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DOLLY = REPO.parent / "shared" / "data" / "databricks-dolly-15k" / "databricks-dolly-15k.jsonl"

# a tiny SmolLM2-architecture config (real vocab, so the real tokenizer fits it)
TINY = dict(vocab_size=49152, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
            intermediate_dim=64, max_seq_len=256, rope_base=100_000.0, norm_eps=1e-5)


def tiny_hf_config(**overrides):
    from transformers import LlamaConfig

    t = dict(TINY, **overrides)
    return LlamaConfig(
        initializer_range=t.get("initializer_range", 0.02),
        vocab_size=t["vocab_size"], hidden_size=t["embed_dim"], intermediate_size=t["intermediate_dim"],
        num_hidden_layers=t["num_layers"], num_attention_heads=t["num_heads"],
        num_key_value_heads=t["num_kv_heads"], max_position_embeddings=t["max_seq_len"],
        rope_theta=t["rope_base"], rms_norm_eps=t["norm_eps"], tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu",
    )


@pytest.fixture(scope="session")
def gguf_path():
    from jsd_loss.prepare import default_gguf_path

    path = default_gguf_path()
    assert path.is_file(), f"{path} missing: run scripts/setup.sh"
    return path


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, gguf_path):
    """The real SmolLM2-135M-Instruct, imported from the GGUF once per test session."""
    from jsd_loss.prepare import prepare_teacher_from_gguf

    return prepare_teacher_from_gguf(tmp_path_factory.mktemp("models") / "teacher", gguf_path)


@pytest.fixture(scope="session")
def gguf_reference(gguf_path):
    """Independent reference: transformers' own GGUF loader (model and tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return model, tokenizer


@pytest.fixture(scope="session")
def reference_tokenizer(gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def tokenizer_json(teacher_dir):
    return teacher_dir / "tokenizer.json"


def write_tiny_hf_dir(path: Path, seed: int = 0, tokenizer_from: Path = None, **overrides) -> Path:
    """A tiny random HF Llama (SmolLM2 architecture) saved as a standard HF directory."""
    import shutil

    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_hf_config(**overrides))
    model.save_pretrained(str(path))
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "generation_config.json"):
            shutil.copy2(tokenizer_from / name, path / name)
    return path


# ---------------------------------------------------------------- recipe runs

QUICK = REPO / "configs" / "smollm2" / "135M_to_90M_jsd_quick.yaml"
TINY_MODEL = {"_component_": "jsd_loss.models.smollm2.smollm2", **TINY}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, teacher_dir):
    root = tmp_path_factory.mktemp("tiny")
    # a wide init makes the tiny teacher's distributions peaked, so there is something to distil
    teacher = write_tiny_hf_dir(root / "teacher", seed=1, tokenizer_from=teacher_dir, initializer_range=0.5)
    student = write_tiny_hf_dir(root / "student", seed=2, tokenizer_from=teacher_dir)
    return teacher, student


def tiny_config(tmp_path: Path, teacher: Path, student: Path, **overrides) -> Path:
    cfg = OmegaConf.load(QUICK)
    cfg.output_dir = str(tmp_path / "out")
    cfg.teacher_dir, cfg.student_dir = str(teacher), str(student)
    cfg.model = dict(TINY_MODEL)
    cfg.teacher_model = dict(TINY_MODEL)
    cfg.tokenizer.max_seq_len = 64
    cfg.dataset.source = str(DOLLY)
    cfg.dataset.max_rows = 16
    cfg.batch_size = 2
    cfg.max_steps_per_epoch = 4
    cfg.save_every_n_steps = 2
    cfg.optimizer.lr = 1e-3
    # fp32 unless a test asks otherwise (the quick config defaults to bf16 mixed precision)
    cfg.mixed_precision = cfg.teacher_dtype = None
    cfg.keep_freed_cpu_memory = False
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    path = tmp_path / "config.yaml"
    OmegaConf.save(cfg, path)
    return path


# recipes run by their path in the package, with no PYTHONPATH (see jsd_loss/recipes/__init__.py)
SINGLE_DEVICE = "jsd_loss/recipes/jsd_distill_single_device.py"
DISTRIBUTED = "jsd_loss/recipes/jsd_distill_distributed.py"
EVAL = "jsd_loss/recipes/eval_distill.py"


def clean_env(**extra: str) -> dict:
    """This process's environment without PYTHONPATH: the recipes must not need it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **extra}


def tune_run(config: Path, *args: str, recipe=SINGLE_DEVICE, check=True):
    env = clean_env()
    proc = subprocess.run(
        [sys.executable, "-m", "torchtune._cli.tune", "run", recipe, "--config", str(config), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tune run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def train_in_process(config: Path):
    """The single-device recipe's ``recipe_main`` without the CLI: construct, set up, train,
    clean up; returns the recipe."""
    from jsd_loss.recipes.jsd_distill_single_device import KDRecipeSingleDevice

    cfg = OmegaConf.load(config)
    recipe = KDRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    recipe.train()
    recipe.cleanup()
    return recipe


def metrics(out: Path):
    return [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
