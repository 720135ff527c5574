from __future__ import annotations

from pathlib import Path

from textrnn.tokenization import (
    UNK,
    build_char_tokenizer,
    build_word_tokenizer,
    encode_batch,
    load_tokenizer,
    save_tokenizer,
)


def _words(tokenizer_text: str) -> list[str]:
    tok = build_word_tokenizer(["placeholder"])
    pre = tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(tokenizer_text))
    return [w for w, _ in pre]


def test_raw_text_is_read_the_way_sst2_is_written() -> None:
    assert _words("It's not bad! Doesn't work, can't stop.") == _words(
        "it 's not bad ! does n't work , ca n't stop .")
    assert _words("It’s “GREAT”") == ["it", "'s", "“", "great", "”"]
    assert _words("well-made <br /> film") == ["well-made", "film"]


def test_word_tokenizer_maps_unknown_words_and_reserves_padding() -> None:
    tok = build_word_tokenizer(["a good film", "a bad film", "good"], max_vocab=10)
    vocab = tok.get_vocab()
    assert vocab["<pad>"] == 0 and vocab[UNK] == 1
    assert vocab["good"] < vocab["bad"]  # more frequent words first
    ids = encode_batch(tok, ["A GOOD zebra"])[0]
    assert ids == [vocab["a"], vocab["good"], 1]


def test_word_tokenizer_vocabulary_is_capped() -> None:
    tok = build_word_tokenizer([f"w{i}" for i in range(100)], max_vocab=12)
    assert tok.get_vocab_size() == 12


def test_char_tokenizer_round_trips_every_character_of_its_alphabet() -> None:
    text = "ROMEO:\nBut soft!  What light?\t(yonder)\n\n'é' ☃"
    tok = build_char_tokenizer(text)
    ids = tok.encode(text).ids
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_char_tokenizer_maps_unseen_characters_to_the_unknown_token() -> None:
    tok = build_char_tokenizer("abc ")
    ids = tok.encode("ab😀z").ids
    assert ids[2:] == [0, 0] and tok.id_to_token(0) == UNK


def test_tokenizers_survive_save_and_load(tmp_path: Path) -> None:
    for tok in (build_word_tokenizer(["it 's fine", "Not fine!"]), build_char_tokenizer("xyz\n")):
        path = tmp_path / "tokenizer.json"
        save_tokenizer(tok, path)
        again = load_tokenizer(path)
        for text in ("It's fine!", "xy\nz"):
            assert again.encode(text).ids == tok.encode(text).ids
