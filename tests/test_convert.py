"""Number-for-number parity with PyTorch nanoLOOP (tests/fixtures, copied from ../shared) and the converter."""

import builtins
import json
import pathlib

import jax
import numpy as np
import optax
import pytest

from nanoloop_jax import checkpoint, convert
from nanoloop_jax.model import LoopedGPT

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

    from nanoloop_jax.model import ModelConfig, init_params

    config = ModelConfig(block_size=8, vocab_size=11, n_prelude=1, n_block=1, n_coda=1, n_head=2, n_embd=8, bias=True)
    params = jax.tree_util.tree_map(np.asarray, init_params(config, jax.random.PRNGKey(0)))
    sd, model_args = convert.to_nanoloop(config, params)
    assert "transformer.prelude.0.attn.c_attn.bias" in sd and "inject.bias" in sd
    config2, params2 = convert.from_nanoloop(sd, model_args)
    assert config2 == dataclasses.replace(config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def test_missing_torch_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="--extra torch"):
        convert.load_nanoloop_ckpt(str(FIXTURES / "standard" / "ckpt.pt"))


@pytest.mark.parametrize("case", CASES)
def test_ckpt_pt_to_orbax_and_back(case, tmp_path):
    pytest.importorskip("torch", reason="reading ckpt.pt needs the [torch] extra")
    ref, model_args, sd = _load(case)
    out = tmp_path / "out"
    assert convert.main([str(FIXTURES / case / "ckpt.pt"), str(out)]) == 0
    loaded = checkpoint.load_params(str(out))
    logits = LoopedGPT(loaded.model_config).apply({"params": loaded.params}, ref["idx"].astype(np.int32))
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-5)
    assert convert.main([str(out), str(tmp_path / "back.pt"), "--to-nanoloop"]) == 0
    back = convert.load_nanoloop_ckpt(str(tmp_path / "back.pt"))
    assert back["model_args"] == model_args
    for k in sd:
        np.testing.assert_array_equal(back["model"][k], sd[k], err_msg=k)
