"""Number-for-number parity with PyTorch nanoLOOP (tests/fixtures, copied from ../shared) and the converter."""

import builtins
import json
import os
import pathlib
import pickle
import zipfile

import jax
import numpy as np
import optax
import pytest
from helpers import perturbed_params, tiny_config
from ml_collections import ConfigDict

from nanoloop_jax import cli
from nanoloop_jax.ckpt import checkpoint, convert, loading
from nanoloop_jax.config import base_config, model_config
from nanoloop_jax.errors import UserError
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.tools import convert as convert_tool

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CASES = ["standard", "prc_inject_bptt"]


def _load(case):
    ref = np.load(FIXTURES / case / "expected.npz")
    model_args = json.loads((FIXTURES / case / "model_args.json").read_text())
    sd = {k[len("param/") :]: ref[k] for k in ref.files if k.startswith("param/")}
    return ref, model_args, sd


@pytest.mark.parametrize("case", CASES)
def test_logits_loss_and_every_gradient_match_nanoloop(case):
    ref, model_args, sd = _load(case)
    config, params = convert.from_nanoloop(sd, model_args)
    idx, targets = ref["idx"].astype(np.int32), ref["targets"].astype(np.int32)

    def loss_fn(p):
        logits = LoopedGPT(config).apply({"params": p}, idx)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits[:, -1:], np.load(FIXTURES / case / "logits_last.npy"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(loss, ref["loss"], atol=1e-5, rtol=0)
    grad_sd, _ = convert.to_nanoloop(config, grads)
    names = [k[len("grad/") :] for k in ref.files if k.startswith("grad/")]
    assert len(names) == len(grad_sd) - 1  # every parameter but the tied lm_head alias
    for name in names:
        np.testing.assert_allclose(grad_sd[name], ref[f"grad/{name}"], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_round_trip_is_exact(case):
    _, model_args, sd = _load(case)
    config, params = convert.from_nanoloop(sd, model_args)
    sd2, model_args2 = convert.to_nanoloop(config, params)
    assert model_args2 == model_args
    assert set(sd2) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(sd2[k], sd[k], err_msg=k)


def test_torch_compile_prefix_and_bad_state_dicts():
    _, model_args, sd = _load("prc_inject_bptt")
    prefixed = {f"_orig_mod.{k}": v for k, v in sd.items()}
    _, params = convert.from_nanoloop(prefixed, model_args)
    np.testing.assert_array_equal(params["loop"]["inject"]["kernel"], sd["inject.weight"].T)
    missing = {k: v for k, v in sd.items() if k != "norm_recur.weight"}
    with pytest.raises(convert.ConversionError, match="missing \\['norm_recur.weight'\\]"):
        convert.from_nanoloop(missing, model_args)
    with pytest.raises(convert.ConversionError, match="shape mismatch"):
        convert.from_nanoloop(sd, {**model_args, "n_embd": 32, "n_head": 2})
    with pytest.raises(convert.ConversionError, match="lm_head.weight differs"):
        convert.from_nanoloop({**sd, "lm_head.weight": sd["lm_head.weight"] + 1}, model_args)


def test_bias_true_round_trip():
    import dataclasses

    from nanoloop_jax.model.config import ModelConfig
    from nanoloop_jax.model.looped import init_params

    config = ModelConfig(block_size=8, vocab_size=11, n_prelude=1, n_block=1, n_coda=1, n_head=2, n_embd=8, bias=True)
    params = jax.tree_util.tree_map(np.asarray, init_params(config, jax.random.PRNGKey(0)))
    sd, model_args = convert.to_nanoloop(config, params)
    assert "transformer.prelude.0.attn.c_attn.bias" in sd and "inject.bias" in sd
    config2, params2 = convert.from_nanoloop(sd, model_args)
    assert config2 == dataclasses.replace(config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def _block_torch(monkeypatch):
    """Make `import torch` fail, as on a machine without the [torch] extra."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("no torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize("case", CASES)
def test_ckpt_pt_reads_without_torch_to_the_reference_arrays(case, monkeypatch):
    _block_torch(monkeypatch)
    _, model_args, sd = _load(case)
    ckpt = convert.load_nanoloop_ckpt(str(FIXTURES / case / "ckpt.pt"))
    assert ckpt["model_args"] == model_args and isinstance(ckpt["iter_num"], int)
    assert set(ckpt["model"]) == set(sd)
    for k in sd:
        assert ckpt["model"][k].dtype == np.float32
        np.testing.assert_array_equal(ckpt["model"][k], sd[k], err_msg=k)


def _torch_zip(tmp_path, pickle_bytes: bytes, storages: dict[str, bytes] | None = None) -> str:
    """A torch.save-layout zip with the given data.pkl (and raw storages)."""
    path = tmp_path / "crafted.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
    return str(path)


def test_ckpt_pt_with_any_other_object_is_refused_in_one_line(tmp_path):
    ran = tmp_path / "ran"
    # what an attacker's pickle looks like: a GLOBAL to a callable, REDUCE'd with an argument
    command = f"touch {ran}".encode()
    evil = b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."
    with pytest.raises(convert.ConversionError, match="pickles os.system, which is not a tensor") as info:
        convert.load_nanoloop_ckpt(_torch_zip(tmp_path, evil))
    assert "\n" not in str(info.value) and not ran.exists()
    with pytest.raises(convert.ConversionError, match="pickles builtins.eval"):
        convert.load_nanoloop_ckpt(_torch_zip(tmp_path, b"\x80\x02cbuiltins\neval\n."))
    (tmp_path / "old.pt").write_bytes(pickle.dumps({"model": {}}))  # torch < 1.6 format, or any other file
    with pytest.raises(convert.ConversionError, match="not a zip-format torch.save file"):
        convert.load_nanoloop_ckpt(str(tmp_path / "old.pt"))


def test_ckpt_pt_tensor_past_its_storage_is_refused(tmp_path):
    # a (4, 4) float tensor over a 3-element storage: reading it would run past the buffer
    payload = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
        b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x03tQK\x00K\x04K\x04\x86K\x04K\x01\x86\x89NtR."
    )
    with pytest.raises(convert.ConversionError, match="reaches element 15 of a 3-element storage"):
        convert.load_nanoloop_ckpt(_torch_zip(tmp_path, payload, {"0": np.zeros(3, np.float32).tobytes()}))


def test_writing_ckpt_pt_without_torch_names_the_extra(monkeypatch, tmp_path):
    _block_torch(monkeypatch)
    _, model_args, sd = _load("standard")
    config, params = convert.from_nanoloop(sd, model_args)
    with pytest.raises(UserError, match="--extra torch"):
        convert.save_nanoloop_ckpt(str(tmp_path / "x.pt"), config, params)


@pytest.mark.parametrize("case", CASES)
def test_ckpt_pt_to_orbax_and_back(case, tmp_path):
    ref, model_args, sd = _load(case)
    out = tmp_path / "out"
    assert (
        cli.call_tool(convert_tool.define_flags, convert_tool.run, [str(FIXTURES / case / "ckpt.pt"), str(out)], True)
        == 0
    )
    loaded = checkpoint.load_params(str(out))
    logits = LoopedGPT(loaded.model_config).apply({"params": loaded.params}, ref["idx"].astype(np.int32))
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-5)
    pytest.importorskip("torch", reason="writing ckpt.pt (--to-nanoloop) needs the [torch] extra")
    assert (
        cli.call_tool(
            convert_tool.define_flags, convert_tool.run, [str(out), str(tmp_path / "back.pt"), "--to-nanoloop"], True
        )
        == 0
    )
    back = convert.load_nanoloop_ckpt(str(tmp_path / "back.pt"))
    assert back["model_args"] == model_args
    for k in sd:
        np.testing.assert_array_equal(back["model"][k], sd[k], err_msg=k)


def test_converted_checkpoint_records_a_run_config_naming_its_dataset(tmp_path):
    """Converted weights get the same config.json/meta schema as trained runs (base_config's), so loading
    finds the dataset the same way; without a dataset it names none."""
    config = tiny_config()
    params = perturbed_params(config)
    out = tmp_path / "named"
    checkpoint.write_params_only(str(out), config, params, step=5, best_val_loss=1.5, dataset="shakespeare_char")
    run_cfg = json.loads((out / "config.json").read_text())
    assert checkpoint.read_meta(str(out))["config"] == run_cfg
    assert sorted(run_cfg) == sorted(base_config().to_dict())
    assert model_config(ConfigDict(run_cfg["model"])) == config
    model = loading.load_model(str(out))
    assert model.model_config == config and model.data_dir == os.path.join("data", "shakespeare_char")
    checkpoint.write_params_only(str(tmp_path / "unnamed"), config, params, step=5, best_val_loss=1.5)
    assert loading.load_model(str(tmp_path / "unnamed")).data_dir is None


def test_to_nanoloop_writes_the_run_config_and_sampling_the_result_finds_the_dataset(tmp_path, monkeypatch):
    """--to-nanoloop writes the run's config as nanoLOOP's flat ckpt['config'] (dataset, data_dir, batch_size, ...):
    loading the ckpt.pt back finds the dataset, so sample.py needs no --data_dir. Torch is faked (pickle in its
    place), so this runs without the [torch] extra."""
    config = tiny_config()
    src = tmp_path / "run"
    checkpoint.write_params_only(
        str(src), config, perturbed_params(config), step=5, best_val_loss=1.5, dataset="tiny", data_dir="/d/tiny"
    )

    class FakeTorch:
        from_numpy = staticmethod(np.asarray)

        @staticmethod
        def save(obj, path):
            with open(path, "wb") as f:
                pickle.dump(obj, f)

    monkeypatch.setattr(convert, "_import_torch", lambda: FakeTorch)
    dst = tmp_path / "back.pt"
    assert cli.call_tool(convert_tool.define_flags, convert_tool.run, [str(src), str(dst), "--to-nanoloop"], True) == 0
    with open(dst, "rb") as f:
        written = pickle.load(f)
    run_cfg = checkpoint.read_meta(str(src))["config"]
    assert written["config"]["dataset"] == "tiny" and written["config"]["data_dir"] == "/d/tiny"
    for section, key in [("data", "batch_size"), ("opt", "learning_rate"), ("train", "max_iters"), ("model", "n_loop")]:
        assert written["config"][key] == run_cfg[section][key], key
    assert all(isinstance(v, int | float | str | bool) for v in written["config"].values())  # flat, as nanoLOOP's

    monkeypatch.setattr(convert, "load_nanoloop_ckpt", lambda path: written)
    assert loading.load_model(None, str(dst)).data_dir == "/d/tiny"
    written["config"] = {"dataset": "shakespeare_char"}  # a ckpt.pt of nanoLOOP's own train.py: data/<dataset>
    assert loading.load_model(None, str(dst)).data_dir == os.path.join("data", "shakespeare_char")


def test_converting_into_a_directory_that_holds_a_checkpoint_is_one_line(tmp_path, capsys):
    args = [str(FIXTURES / "standard" / "ckpt.pt"), str(tmp_path / "out")]
    assert cli.call_tool(convert_tool.define_flags, convert_tool.run, args, True) == 0
    capsys.readouterr()
    assert cli.call_tool(convert_tool.define_flags, convert_tool.run, args, True) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'out'} already holds a nanoloop-jax checkpoint (steps 0); convert into a new directory"
    ], err
