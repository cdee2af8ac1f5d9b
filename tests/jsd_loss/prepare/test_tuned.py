import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from jsd_loss.prepare import prepare_tuned_teacher
from jsd_loss.prepare.__main__ import main as prepare_main
from tests.conftest import write_tiny_hf_dir

Q = "model.layers.0.self_attn.q_proj.weight"
DOWN = "model.layers.1.mlp.down_proj.weight"
SHARD = "model-00001-of-00001.safetensors"


def stock_lora_output(path, base, state):
    """A directory laid out as torchtune's stock LoRA recipe writes an epoch (merged weights in
    one numbered shard with an index, tokenizer files and the adapter config beside them)."""
    path.mkdir(parents=True)
    for f in base.iterdir():
        if f.suffix == ".json":
            shutil.copy2(f, path / f.name)
    save_file(state, str(path / SHARD))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: SHARD for k in state}}))
    (path / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    return path


@pytest.fixture
def base_and_tuned(tmp_path, teacher_dir):
    base = write_tiny_hf_dir(tmp_path / "base", seed=3, tokenizer_from=teacher_dir)
    state = load_file(str(base / "model.safetensors"))
    delta = torch.full_like(state[Q], 0.001)  # about 5% of q, hand-computed
    tuned_state = dict(state, **{Q: state[Q] + delta, DOWN: state[DOWN] * 1.5})
    tuned = stock_lora_output(tmp_path / "lora" / "epoch_0", base, tuned_state)
    return base, tuned, state, tuned_state


def test_tuned_teacher_is_the_merged_weights_as_a_plain_hf_dir(tmp_path, base_and_tuned):
    base, tuned, state, tuned_state = base_and_tuned
    out = prepare_tuned_teacher(tuned, base, tmp_path / "teacher")
    written = load_file(str(out / "model.safetensors"))
    assert set(written) == set(tuned_state)
    assert all(torch.equal(written[k], tuned_state[k]) for k in written)
    assert json.loads((out / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    manifest = json.loads((out / "jsd_distill_prepare.json").read_text())
    assert manifest["tensors_changed"] == 2 and manifest["tensors"] == len(state)
    assert manifest["adapter_config"] == {"r": 8, "lora_alpha": 16}
    # the largest relative change is the down projection's 0.5 (hand-computed), not q's
    assert manifest["max_relative_change"] == pytest.approx(0.5, rel=1e-6)

    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert prepare_main(["tuned-teacher", "--lora-dir", str(tuned), "--base-dir", str(base),
                         "--output-dir", str(out)]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime  # complete and unchanged: skipped


def _refusal(tmp_path, base, tuned, capsys):
    out = tmp_path / "refused"
    code = prepare_main(["tuned-teacher", "--lora-dir", str(tuned), "--base-dir", str(base),
                         "--output-dir", str(out)])
    assert code == 2 and not out.exists()
    return capsys.readouterr().err


def test_refuses_unmerged_unchanged_or_foreign_weights_naming_the_problem(tmp_path, base_and_tuned, teacher_dir,
                                                                          capsys):
    base, tuned, state, tuned_state = base_and_tuned

    same = stock_lora_output(tmp_path / "same", base, state)
    assert "unchanged" in _refusal(tmp_path, base, same, capsys)

    adapters = stock_lora_output(tmp_path / "adapters", base,
                                 dict(tuned_state, **{"model.layers.0.self_attn.q_proj.lora_a.weight": state[Q][:4]}))
    assert "unmerged adapter tensors" in _refusal(tmp_path, base, adapters, capsys)

    other = write_tiny_hf_dir(tmp_path / "other", seed=3, tokenizer_from=teacher_dir, num_layers=3)
    err = _refusal(tmp_path, base, other, capsys)
    assert "not a tuning of" in err and "num_hidden_layers: 3 vs 2" in err

    (tuned / "tokenizer.json").write_text((tuned / "tokenizer.json").read_text().replace('"<|im_start|>"', '"<|x|>"'))
    assert "tokenizer" in _refusal(tmp_path, base, tuned, capsys)

    assert "not found" in _refusal(tmp_path, base, tmp_path / "nowhere", capsys)


def test_a_foreign_output_dir_is_kept_unless_overwrite(tmp_path, base_and_tuned):
    base, tuned, _, tuned_state = base_and_tuned
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_tuned_teacher(tuned, base, out)
    assert (out / "notes.txt").read_text() == "mine"
    prepare_tuned_teacher(tuned, base, out, overwrite=True)
    assert torch.equal(load_file(str(out / "model.safetensors"))[Q], tuned_state[Q])


def test_a_checksums_file_torchtune_copied_from_the_base_does_not_block_the_tuned_weights(tmp_path, base_and_tuned):
    """torchtune's checkpointer copies every .json of its input dir into its output, so a stock LoRA
    output of a teacher prepared here carries the base's checksums.json, which lists model.safetensors
    (absent there) and not the new shard; the clean-clone main job failed on it."""
    from jsd_loss.checkpointing import atomic_directory, write_model_dir

    base, tuned, state, tuned_state = base_and_tuned
    checked_base = tmp_path / "checked_base"
    with atomic_directory(checked_base) as tmp:
        write_model_dir(tmp, state, json.loads((base / "config.json").read_text()), copy_from=base)
    assert (checked_base / "checksums.json").is_file()
    shutil.copy2(checked_base / "checksums.json", tuned / "checksums.json")
    out = prepare_tuned_teacher(tuned, checked_base, tmp_path / "teacher")
    assert torch.equal(load_file(str(out / "model.safetensors"))[Q], tuned_state[Q])


def test_an_output_recorded_with_the_older_digest_is_recognised_not_refused(tmp_path, base_and_tuned):
    # before v2 the manifest's source_sha256 was a SHA-256 over the weight files' hex digests
    base, tuned, _, _ = base_and_tuned
    out = prepare_tuned_teacher(tuned, base, tmp_path / "teacher")
    manifest_path = out / "jsd_distill_prepare.json"
    per_file = hashlib.sha256((tuned / SHARD).read_bytes()).hexdigest()
    manifest = json.loads(manifest_path.read_text())
    manifest["source_sha256"] = hashlib.sha256(per_file.encode()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    before = (out / "model.safetensors").stat().st_mtime_ns
    prepare_tuned_teacher(tuned, base, out)  # no FileExistsError, nothing rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    manifest["source_sha256"] = "0" * 64  # any other digest is still foreign
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_tuned_teacher(tuned, base, out)
