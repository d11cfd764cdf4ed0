"""Tokenizer: char-level from meta.json, GPT-2 BPE otherwise, one-line errors."""

import json
import pathlib

import pytest

from nanoloop_jax.data import tokenizer as tokenizer_lib
from nanoloop_jax.data.batches import DataError
from nanoloop_jax.data.tokenizer import Tokenizer, load_tokenizer
from nanoloop_jax.errors import UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def gpt2() -> Tokenizer:
    """The GPT-2 tokenizer, or a skip when its files can be neither found nor downloaded."""
    try:
        return Tokenizer.gpt2()
    except DataError as e:
        pytest.skip(f"tiktoken gpt2 files unavailable offline: {e}")


def char_meta(chars: str) -> dict:
    return {
        "vocab_size": len(chars),
        "itos": {str(i): c for i, c in enumerate(chars)},
        "stoi": {c: i for i, c in enumerate(chars)},
    }


def test_char_round_trip_from_data_dir(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(char_meta("\n abc")))
    tok = load_tokenizer(tmp_path)
    assert (tok.name, tok.vocab_size, tok.eot_token) == ("char", 5, None)
    assert tok.encode("ab c\n") == [2, 3, 1, 4, 0]
    assert tok.decode(tok.encode("cab\nba ")) == "cab\nba "


def test_char_unknown_characters_listed_once_on_one_line():
    tok = load_tokenizer(char_meta("abc"))
    with pytest.raises(UserError) as excinfo:
        tok.encode("abXc\tX\né")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "'X', '\\t', '\\n', 'é'" in message
    assert message.count("'X'") == 1
    assert "meta.json" in message


def test_decode_rejects_ids_outside_vocab():
    with pytest.raises(UserError, match=r"outside the 3-token vocabulary: \[3, 7\]"):
        load_tokenizer(char_meta("abc")).decode([0, 3, 7, 3])


def test_gpt2_round_trip_and_eot(gpt2):
    assert (gpt2.name, gpt2.vocab_size, gpt2.eot_token) == ("gpt2", 50257, 50256)
    assert gpt2.encode("hello world") == [31373, 995]
    ids = gpt2.encode("First Citizen:<|endoftext|>Before we proceed")
    assert 50256 in ids
    assert gpt2.decode(ids) == "First Citizen:<|endoftext|>Before we proceed"


def test_no_meta_or_bpe_meta_means_gpt2(tmp_path, gpt2):
    assert load_tokenizer(tmp_path).name == "gpt2"
    assert load_tokenizer(None).name == "gpt2"
    (tmp_path / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257}))
    assert load_tokenizer(tmp_path).vocab_size == 50257


def test_unknown_tokenizer_name():
    with pytest.raises(DataError, match="'sentencepiece'"):
        load_tokenizer({"tokenizer": "sentencepiece"})


def test_unloadable_gpt2_files_give_one_line(monkeypatch):
    def offline(name):
        raise ConnectionError("Name or service\nnot known")

    monkeypatch.setattr(tokenizer_lib.tiktoken, "get_encoding", offline)
    tokenizer_lib.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(DataError, match="TIKTOKEN_CACHE_DIR") as excinfo:
            tokenizer_lib.gpt2_encoding()
        assert "\n" not in str(excinfo.value) and "Name or service not known" in str(excinfo.value)
    finally:
        tokenizer_lib.gpt2_encoding.cache_clear()  # later tests load the real encoding again


def test_a_small_model_without_its_dataset_asks_for_data_dir_before_loading_gpt2(tmp_path, monkeypatch):
    tokenizer = tokenizer_lib
    monkeypatch.setattr(tokenizer, "gpt2_encoding", lambda: pytest.fail("tiktoken must not be loaded"))
    with pytest.raises(
        DataError, match=r"^this model has 65 tokens .* its checkpoint names no dataset; pass --data_dir"
    ):
        tokenizer.model_tokenizer(None, 65)
    with pytest.raises(DataError, match=f"this model has 65 tokens .* and {tmp_path} has no meta.json"):
        tokenizer.model_tokenizer(tmp_path, 65)
    (tmp_path / "meta.json").write_text(json.dumps(char_meta("abc")))
    assert tokenizer.model_tokenizer(tmp_path, 65).name == "char"
