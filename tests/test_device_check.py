"""scripts/device_check.sh's suite runs end to end on CPU, and its accelerator-only parts run given a device."""

import json
import types

from ml_collections import ConfigDict

from nanoloop_jax.config import base_config
from nanoloop_jax.tools import device_check

TINY = {"vocab_size": 64, "block_size": 32, "n_embd": 32, "n_head": 2, "n_loop": 2, "bptt_k": 1}


def tiny_config() -> ConfigDict:
    c = base_config()
    c.data.dataset = "no_such_dataset"
    c.data.batch_size = 4
    for k, v in TINY.items():
        c.model[k] = v
    return c


def test_device_suite_runs_on_cpu_and_reports_no_accelerator(tmp_path):
    path = tmp_path / "device_check.json"
    assert device_check.main(tiny_config(), json_path=str(path)) == 0
    r = json.loads(path.read_text())
    assert r["checks_pass"] and r["losses"]["fp32_equal"] and r["attention"]["equal"]
    assert r["train"]["status"] == r["decode"]["status"] == device_check.NO_ACCELERATOR
    table = (tmp_path / "device_check.md").read_text()
    assert table.startswith("| check | result |") and "no accelerator" in table


def test_train_and_decode_figures_are_measured_given_an_accelerator():
    """The accelerator branch, run on the CPU under an H100's name (MFU None: the real device has no peak)."""
    h100 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    train = device_check.measure_train(tiny_config(), h100, steps=2)
    assert train["status"] == "ok" and train["batch_shape"] == [1, 16, 32]
    assert train["roofline"].startswith("roofline (h100): step >= ")
    decode = device_check.measure_decode(tiny_config(), h100, batches=(2,), new_tokens=8)
    assert decode["status"] == "ok" and decode["batch_2_tokens_per_s"] > 0
    r = {"device": "H100", "platform": "cuda", "jax": "x", "seconds": 1.0, "checks_pass": True, "train": train}
    r["decode"] = decode
    r["losses"] = {k: 1.0 for k in ("device_fp32_loss", "cpu_fp32_loss", "fp32_rel_diff", "device_bf16_loss")}
    r["losses"].update(bf16_rel_diff=0.0, fp32_equal=True, bf16_within_tolerance=True, status="ok")
    r["attention"] = {"kernel": "cudnn", "dtype": "bfloat16", "value_rel_diff": 0.0, "grad_max_abs_diff": 0.0}
    r["attention"].update(equal=True, status="ok")
    assert "| loop-aware MFU | no peak for this device |" in device_check.markdown(r)
