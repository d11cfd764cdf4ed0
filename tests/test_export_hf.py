"""Hugging Face export: transformers' logits, generate() and tokenizers == ours; lm-eval runs a local task.

Needs the [hf] extra (torch, transformers, tokenizers, safetensors, lm-eval): `uv run --extra hf pytest
tests/test_export_hf.py`; without it the module is skipped. Oracles: the JAX model (LoopedGPT.apply), the JAX
KV-cache decoder as sample.py drives it, nanoLOOP's own PyTorch logits (tests/fixtures), tiktoken and meta.json.
"""

import json
import os
import pathlib
import tempfile

import jax
import numpy as np
import pytest
from helpers import REPO_ROOT, perturbed_params, tiny_checkpoint, tiny_config, tiny_data_dir

# offline, and transformers' copies of the remote code in a per-process folder rather than ~/.cache
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
HF_MODULES = pathlib.Path(tempfile.gettempdir()) / f"nanoloop-jax-tests-hf-modules-{os.getpid()}"
os.environ.setdefault("HF_MODULES_CACHE", str(HF_MODULES))

HF_EXTRA = "needs the [hf] extra: uv run --extra hf pytest tests/test_export_hf.py"
torch = pytest.importorskip("torch", reason=HF_EXTRA)
transformers = pytest.importorskip("transformers", reason=HF_EXTRA)
pytest.importorskip("safetensors", reason=HF_EXTRA)
pytest.importorskip("tokenizers", reason=HF_EXTRA)

from nanoloop_jax import cli  # noqa: E402
from nanoloop_jax.ckpt import convert  # noqa: E402
from nanoloop_jax.data.tokenizer import Tokenizer, load_tokenizer  # noqa: E402
from nanoloop_jax.decode.recurrence import DecodeConfig  # noqa: E402
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig  # noqa: E402
from nanoloop_jax.errors import UserError  # noqa: E402
from nanoloop_jax.hf.export import export  # noqa: E402
from nanoloop_jax.model.looped import LoopedGPT  # noqa: E402
from nanoloop_jax.tools import export_hf  # noqa: E402

DEPTHS = (1, 4, 16)
TOL = 1e-4
FIXTURES = REPO_ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module", autouse=True)
def _remove_module_copies():
    yield
    import shutil

    shutil.rmtree(HF_MODULES, ignore_errors=True)


def load_hf(hf_dir, **kwargs):
    return transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=True, **kwargs)


def hf_logits(model, idx, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(np.asarray(idx), dtype=torch.long), **kwargs).logits.numpy()


def jax_logits(config, params, idx, n_loop) -> np.ndarray:
    return np.asarray(LoopedGPT(config).apply({"params": params}, np.asarray(idx, np.int32), n_loop=n_loop))


def jax_greedy(config, params, prompt, n_new, n_loop) -> list[int]:
    """Greedy tokens as sample.py --temperature=0 --window=restart draws them (KV-cache decoder)."""
    decoder = KVDecoder(
        config, SampleConfig(temperature=0.0), DecodeConfig(n_loop=n_loop), chunk_size=32, window="restart"
    )
    prompt_BxP = np.asarray([prompt], np.int32)
    return decoder.generate(params, prompt_BxP, n_new, jax.random.PRNGKey(0)).tokens_BxN[0].tolist()


def hf_greedy(model, prompt, n_new, **kwargs) -> list[int]:
    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n_new, do_sample=False, use_cache=True, **kwargs)
    return out[0, len(prompt) :].tolist()


CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module", params=["learned", "rope", "none", "rope_window"])
def exported(request, tmp_path_factory):
    """(config, params, hf_dir, model) of a perturbed tiny model (biases on) with each position encoding; the NoPE
    one has an exit gate (its weights are exported and loaded, not used), rope_window sliding-window attention."""
    pos_encoding, windowed = request.param.split("_")[0], request.param.endswith("window")
    config = tiny_config(
        pos_encoding=pos_encoding,
        bias=True,
        vocab_size=len(CHARS),
        exit_gate=pos_encoding == "none",
        attn_window=5 if windowed else None,
    )
    params = perturbed_params(config, 0.3)
    hf_dir = tmp_path_factory.mktemp("hf") / request.param
    export(str(hf_dir), config, params, Tokenizer.char({ch: i for i, ch in enumerate(CHARS)}))
    return config, params, hf_dir, load_hf(hf_dir)


def test_logits_equal_jax_at_every_depth(exported):
    config, params, _, model = exported
    idx = np.random.default_rng(0).integers(0, config.vocab_size, (2, config.block_size))
    want = {n_loop: jax_logits(config, params, idx, n_loop) for n_loop in DEPTHS}
    for n_loop in DEPTHS:
        diff = np.abs(hf_logits(model, idx, n_loop=n_loop) - want[n_loop]).max()
        print(f"{config.pos_encoding} n_loop {n_loop}: max |logit diff| {diff:.2e}")
        assert diff <= TOL, (n_loop, diff)
    assert np.abs(want[1] - want[4]).max() > 1e-2  # the depth changes the logits: the check sees n_loop


def test_greedy_generate_with_cache_equals_the_kv_decoder(exported):
    config, params, _, model = exported
    prompt = [1, 5, 7, 2]
    n_new = config.block_size - len(prompt)  # learned positions: within block_size (no window restart)
    if config.pos_encoding != "learned":
        n_new += 8  # rope / NoPE: past block_size, both attend to the last block_size positions
    # n_loop 4 per call (the model's own is 3)
    assert hf_greedy(model, prompt, n_new, n_loop=4) == jax_greedy(config, params, prompt, n_new, 4)


def test_n_loop_at_load_time_and_the_cache_layout(exported):
    config, params, hf_dir, model = exported
    idx = np.arange(6)[None] % config.vocab_size
    deep, info = load_hf(hf_dir, n_loop=8, output_loading_info=True)
    assert deep.config.n_loop == 8
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # every weight has its place
    np.testing.assert_allclose(hf_logits(deep, idx), hf_logits(model, idx, n_loop=8), atol=0, rtol=0)
    with torch.no_grad():
        out = model(torch.tensor(idx), use_cache=True, n_loop=3)
        cache = out.cache
        # one slot per prelude block, coda block and (iteration, recurrent block)
        assert len(cache.layers) == config.n_prelude + config.n_coda + 3 * config.n_block
        assert cache.get_seq_length() == 6
        with pytest.raises(ValueError, match="filled with n_loop=3"):
            model(torch.tensor(idx[:, :1]), cache=cache, use_cache=True, n_loop=4)


def test_orbax_run_exports_with_its_char_tokenizer_and_generates_as_sample_py(tmp_path):
    config, params, out_dir = tiny_checkpoint(tmp_path)  # vocab 59: the fixture text's characters
    data_dir = tiny_data_dir(tmp_path)
    hf_dir = tmp_path / "hf"
    argv = [f"--out_dir={out_dir}", f"--hf_dir={hf_dir}", f"--data_dir={data_dir}"]
    assert cli.call_tool(export_hf.define_flags, export_hf.run, argv) == 0
    names = {p.name for p in hf_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "modeling_nanoloop.py"} <= names
    hf_config = json.loads((hf_dir / "config.json").read_text())
    for field in ("block_size", "vocab_size", "n_prelude", "n_block", "n_coda", "n_loop", "n_head", "n_embd"):
        assert hf_config[field] == getattr(config, field), field
    assert hf_config["pos_encoding"] == "learned" and hf_config["auto_map"]["AutoModelForCausalLM"]

    text = (REPO_ROOT / "tests" / "fixtures" / "tinyshakespeare_head.txt").read_text()[:400]
    ours = load_tokenizer(data_dir)
    for kwargs in ({}, {"trust_remote_code": True}):  # loads with and without trusting the model's code
        tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir), **kwargs)
        assert tok(text)["input_ids"] == ours.encode(text)
        assert tok.decode(ours.encode(text)) == text

    model = load_hf(hf_dir)
    prompt = ours.encode("ROMEO:\n")
    n_new = config.block_size - len(prompt)
    assert hf_greedy(model, prompt, n_new) == jax_greedy(config, params, prompt, n_new, config.n_loop)


def test_nanoloop_ckpt_exports_and_matches_nanoloops_own_logits(tmp_path):
    """tests/fixtures/prc_inject_bptt: nanoLOOP's ckpt.pt and the logits PyTorch nanoLOOP computed (n_loop 4)."""
    case = FIXTURES / "prc_inject_bptt"
    ref = np.load(case / "expected.npz")
    data_dir = tmp_path / "data37"
    data_dir.mkdir()
    chars = CHARS[:37]
    (data_dir / "meta.json").write_text(json.dumps({"vocab_size": 37, "stoi": {c: i for i, c in enumerate(chars)}}))
    hf_dir = tmp_path / "hf"
    argv = [f"--ckpt={case / 'ckpt.pt'}", f"--hf_dir={hf_dir}", f"--data_dir={data_dir}"]
    assert cli.call_tool(export_hf.define_flags, export_hf.run, argv) == 0
    model = load_hf(hf_dir)
    diff = np.abs(hf_logits(model, ref["idx"]) - ref["logits"]).max()
    print(f"nanoLOOP ckpt.pt, n_loop 4: max |logit diff| vs PyTorch nanoLOOP {diff:.2e}")
    assert diff <= TOL
    ckpt = convert.load_nanoloop_ckpt(str(case / "ckpt.pt"))
    config, params = convert.from_nanoloop(ckpt["model"], ckpt["model_args"])
    for n_loop in DEPTHS:
        diff = np.abs(hf_logits(model, ref["idx"], n_loop=n_loop) - jax_logits(config, params, ref["idx"], n_loop))
        assert diff.max() <= TOL, (n_loop, diff.max())


def test_gpt2_tokenizer_files_give_tiktokens_ids(tmp_path):
    import tiktoken

    config = tiny_config(vocab_size=50304)
    hf_dir = tmp_path / "hf"
    export(str(hf_dir), config, perturbed_params(config, 0.1), Tokenizer.gpt2())
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=True)
    enc = tiktoken.get_encoding("gpt2")
    text = "Hello world!  It's   a test:\n\n\tcafé 123,456 <|endoftext|> ünïcödé 🙂 and more."
    want = enc.encode(text, allowed_special={"<|endoftext|>"})
    assert tok(text)["input_ids"] == want
    assert tok.decode(want) == text
    assert tok.eos_token_id == 50256
    assert json.loads((hf_dir / "config.json").read_text())["eos_token_id"] == 50256


def test_existing_dir_needs_overwrite_and_errors_are_one_line(tmp_path, capsys):
    config, _, out_dir = tiny_checkpoint(tmp_path)
    data_dir = tiny_data_dir(tmp_path)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "keep.txt").write_text("x")
    argv = [f"--out_dir={out_dir}", f"--hf_dir={hf_dir}", f"--data_dir={data_dir}"]
    assert cli.call_tool(export_hf.define_flags, export_hf.run, argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exists and is not empty; pass --overwrite" in err
    assert (hf_dir / "keep.txt").exists()
    assert cli.call_tool(export_hf.define_flags, export_hf.run, [*argv, "--overwrite"]) == 0
    assert not (hf_dir / "keep.txt").exists() and (hf_dir / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary dir left
    # a character model whose dataset cannot be found
    argv = [f"--out_dir={out_dir}", f"--hf_dir={tmp_path / 'hf2'}", f"--data_dir={tmp_path / 'nowhere'}"]
    assert cli.call_tool(export_hf.define_flags, export_hf.run, argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"this model has {config.vocab_size} tokens" in err and "--data_dir" in err


def test_gpt2_export_without_tiktoken_files_is_one_line(tmp_path, monkeypatch, capsys):
    import tiktoken.load

    def offline(url):
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    config = tiny_config(vocab_size=50304)
    tokenizer = Tokenizer("gpt2", 50257, 50256)  # the files are what is missing, not the encoding
    with pytest.raises(UserError, match="TIKTOKEN_CACHE_DIR") as err:
        export(str(tmp_path / "hf"), config, perturbed_params(config, 0.1), tokenizer)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_lm_eval_runs_a_local_task_at_two_depths(tmp_path):
    """lm-eval's `hf` model on a multiple-choice task written here (no download), n_loop passed as a model_arg."""
    lm_eval = pytest.importorskip("lm_eval", reason=HF_EXTRA)
    config, _, out_dir = tiny_checkpoint(tmp_path)
    data_dir = tiny_data_dir(tmp_path)
    hf_dir = tmp_path / "hf"
    argv = [f"--out_dir={out_dir}", f"--hf_dir={hf_dir}", f"--data_dir={data_dir}"]
    assert cli.call_tool(export_hf.define_flags, export_hf.run, argv) == 0

    text = (REPO_ROOT / "tests" / "fixtures" / "tinyshakespeare_head.txt").read_text()
    docs = []
    for i in range(6):  # context: 16 characters; choices: the true next 6 and 6 from elsewhere
        start = 500 + 300 * i
        true, other = text[start + 16 : start + 22], text[start + 150 : start + 156]
        docs.append({"context": text[start : start + 16], "choices": [true, other], "label": 0})
    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(
        "task: nanoloop_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {tmp_path / 'datasets'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "target_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n"
    )
    from lm_eval import evaluator
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    newline = load_tokenizer(data_dir).encode("\n")[0]
    scores = {}
    for n_loop in (1, 4):
        # what `lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True,n_loop=K` builds
        # a character vocabulary has no BOS/EOS token: lm-eval's prefix (the start of an empty context) is the
        # newline, as sample.py starts an empty prompt
        lm = get_model("hf").create_from_arg_string(
            f"pretrained={hf_dir},trust_remote_code=True,n_loop={n_loop},prefix_token_id={newline}",
            {"batch_size": 2, "device": "cpu"},
        )
        assert lm.model.config.n_loop == n_loop  # the model_arg reached from_pretrained
        results = evaluator.simple_evaluate(
            model=lm, tasks=["nanoloop_tiny_mc"], task_manager=TaskManager(include_path=str(tasks))
        )
        scores[n_loop] = results["results"]["nanoloop_tiny_mc"]["acc,none"]
    print(f"lm-eval nanoloop_tiny_mc acc: n_loop 1 {scores[1]:.3f}, n_loop 4 {scores[4]:.3f}")
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores.values())
    del lm_eval
