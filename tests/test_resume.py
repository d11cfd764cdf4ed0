"""What a resumed run may change: another architecture is one error; other settings are one line."""

import copy
import dataclasses

import pytest
from helpers import tiny_checkpoint

from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.config import base_config, model_config
from nanoloop_jax.errors import UserError
from nanoloop_jax.train import resume


def _meta(config, step=600, **model):
    """A checkpoint's meta as the Trainer saves it: the model it trained and the run config it was given."""
    mc = dataclasses.replace(model_config(config.model, vocab_size=65), **model)
    return {"step": step, "model_config": dataclasses.asdict(mc), "config": checkpoint.config_json(config)}


def _config():
    c = base_config()
    c.model.n_loop, c.out_dir = 4, "out-a"
    return c


def test_another_architecture_on_resume_is_one_error_naming_field_values_and_fix():
    meta = _meta(_config())
    asked = _config()
    asked.model.n_loop, asked.model.n_embd = 0, 384
    with pytest.raises(resume.ResumeError) as err:
        resume.check_architecture(asked, meta, "out-a")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("out-a holds a checkpoint (step 600) of another architecture: ")
    assert "model.n_loop is 4 there, 0 asked for" in msg and "model.n_embd is 768 there, 384 asked for" in msg
    assert "drop --config.model.n_loop --config.model.n_embd" in msg and "use a new out_dir" in msg
    assert isinstance(err.value, UserError)

    resume.check_architecture(_config(), meta, "out-a")  # the same command resumes
    # weights imported from a ckpt.pt have the file's shape, not the config's: the same command still resumes,
    # and a changed field names the model's own value
    imported = _meta(_config(), n_embd=16)
    resume.check_architecture(_config(), imported, "out-a")
    asked = _config()
    asked.model.n_embd = 32
    with pytest.raises(resume.ResumeError, match="model.n_embd is 16 there, 32 asked for"):
        resume.check_architecture(asked, imported, "out-a")


def test_changed_training_settings_are_one_line_applied_from_the_resumed_step():
    meta = _meta(_config())
    assert resume.changed_settings_line(_config(), meta) is None
    moved = _config()
    moved.out_dir, moved.init_from = "elsewhere", "resume"  # where the run lives is not a setting
    moved.distributed.coordinator_address = "10.0.0.1:1234"  # nor how a pod's processes meet
    assert resume.changed_settings_line(moved, meta) is None
    asked = _config()
    asked.opt.learning_rate, asked.train.max_iters, asked.model.dropout = 1e-3, 900000, 0.1
    line = resume.changed_settings_line(asked, meta)
    assert line == (
        "resuming with changed settings, applied from step 600 on: model.dropout 0.0 -> 0.1, "
        "opt.learning_rate 0.0006 -> 0.001, train.max_iters 600000 -> 900000"
    )
    older = copy.deepcopy(meta)
    del older["config"]["train"]["max_iters"]  # a field newer than the checkpoint is no change
    assert "max_iters" not in resume.changed_settings_line(asked, older)


def test_a_user_error_while_restoring_is_raised_not_taken_for_a_damaged_step(tmp_path):
    *_, out = tiny_checkpoint(tmp_path)

    def attempt(step):
        raise resume.ResumeError("another architecture")

    with pytest.raises(resume.ResumeError):
        checkpoint.restore_newest(str(out), attempt, move_aside=True)
    assert checkpoint.all_steps(str(out)) == [7]  # not moved aside
