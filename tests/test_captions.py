"""Caption readers, prompt stripping, sources registry, de-duplication and stats."""

import dataclasses
import json
import warnings
from collections import defaultdict

import pytest

from fungizsl.data import caption_files as CF
from fungizsl.data import caption_text as CT
from fungizsl.data import captions as C

PROMPTS = {
    "spore": "Describe the spores. Spores are tiny round cells.",
    "hyphae": "Describe the hyphae. Hyphae are long threads. Focus on branching.",
    "mycelium": "Describe the mycelium. It is a dense web.",
}
TEMPS = {"spore": 300.0, "hyphae": 340.0, "mycelium": 365.0}
BODIES = {
    "spore": ["They lie apart on the slide.", "Each one is a small circle!", "Some are oval, e.g. elongated."],
    "hyphae": ["Thin lines fork twice.", "A few filaments cross.", ""],  # "" = prompt only
    "mycelium": ["The web covers the field.", "Threads overlap densely.", "Colour shifts to red."],
}


def _split_entries():
    entries = []
    for cls, bodies in BODIES.items():
        for i, body in enumerate(bodies):
            # Vary the whitespace between prompt and body the way the real files do.
            sep = "  " if i % 2 else " "
            entries.append({
                "image_path": f"/Dataset/train/{cls}_{i}.png",
                "class_label": cls,
                "description": (PROMPTS[cls] + sep + body) if body else PROMPTS[cls],
                "temperature": TEMPS[cls],
            })
    return entries


@pytest.fixture
def split_file(tmp_path):
    path = tmp_path / "train_data.json"
    path.write_text(json.dumps(_split_entries()))
    return path


@pytest.fixture
def fungal_folder(tmp_path):
    entries = _split_entries()
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}_data.json").write_text(json.dumps(entries))
    gen = [{"description": e["description"], "class_label": e["class_label"]} for e in entries]
    (tmp_path / "generated_captions.json").write_text(json.dumps(gen))
    return tmp_path


def test_read_split_raw_drops_temperature(split_file):
    caps = CF.read_split_file(split_file)
    assert len(caps) == 9
    assert {c.class_name for c in caps} == set(CF.FUNGALZSL_CLASSES)
    for c in caps:
        assert isinstance(c, CT.Caption)
        assert c.image_path.startswith("/Dataset/train/")
        assert c.source == "fungalzsl:train_data"
        # The temperature is not a field of a caption and does not leak into its text.
        assert not hasattr(c, "temperature")
        assert "300" not in c.text and "340" not in c.text and "365" not in c.text
    assert "temperature" not in {f.name for f in dataclasses.fields(CT.Caption)}
    with pytest.raises(Exception):
        caps[0].text = "x"  # frozen


def test_detected_prefix_is_sentence_aligned():
    texts = [PROMPTS["hyphae"] + " " + b for b in ["A b.", "C d.", "E f. G h."]] + [PROMPTS["hyphae"]]
    assert CT.detect_prompt_prefix(texts) == PROMPTS["hyphae"]
    # A common prefix that ends mid-sentence is cut back to the last full sentence.
    texts = ["Describe it. The spores are round.", "Describe it. The spores are oval."]
    assert CT.detect_prompt_prefix(texts) == "Describe it."
    # Identical texts, a single text, or no shared sentence: no prefix.
    assert CT.detect_prompt_prefix(["Same. Text.", "Same. Text."]) == ""
    assert CT.detect_prompt_prefix(["Only one. Text."]) == ""
    assert CT.detect_prompt_prefix(["One thing.", "Another thing."]) == ""
    # min_fraction tolerates descriptions without the prompt.
    texts = ["P one. a.", "P one. b.", "P one. c.", "Other."]
    assert CT.detect_prompt_prefix(texts) == ""
    assert CT.detect_prompt_prefix(texts, min_fraction=0.75) == "P one."


def test_strip_prompt_detected(split_file):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        caps = CF.read_split_file(split_file, strip_prompt=True)
    # The hyphae entry that was only its prompt is dropped, with a warning naming the file.
    assert len(caps) == 8
    assert any("dropped 1" in str(w.message) and str(split_file) in str(w.message) for w in caught)
    by = CT.group_by_class(caps)
    assert by["spore"] == BODIES["spore"]
    assert by["hyphae"] == BODIES["hyphae"][:2]
    assert by["mycelium"] == BODIES["mycelium"]
    assert CT.detect_prompt_prefixes(caps) == {c: "" for c in CF.FUNGALZSL_CLASSES}
    assert all(c.image_path for c in caps)
    # drop_empty=False keeps the entry with empty text.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = CF.read_split_file(split_file, strip_prompt=True, drop_empty=False)
    assert len(kept) == 9 and sum(1 for c in kept if c.text == "") == 1


def test_strip_prompt_explicit_mapping(split_file):
    prompts = {"spore": "Describe the spores.", "mycelium": PROMPTS["mycelium"]}
    with pytest.warns(UserWarning, match="dropped 1"):
        caps = CF.read_split_file(split_file, prompts=prompts)
    by = CT.group_by_class(caps)
    # spore: only the explicit first sentence is removed.
    assert by["spore"][0] == "Spores are tiny round cells. They lie apart on the slide."
    assert by["mycelium"] == BODIES["mycelium"]
    # hyphae is not in the mapping: detected.
    assert by["hyphae"] == BODIES["hyphae"][:2]


def test_strip_prefix_whitespace_and_word_boundary():
    assert CT.strip_prefix("Describe  it.\nThe rest.", "Describe it.") == "The rest."
    assert CT.strip_prefix("Describe it. The rest.", "Something else.") == "Describe it. The rest."
    assert CT.strip_prefix("Sporangia seen.", "Spora") == "Sporangia seen."  # not mid-word
    assert CT.strip_prefix("  text ", "") == "text"


def test_read_generated(fungal_folder):
    caps = CF.read_generated_captions(fungal_folder / "generated_captions.json")
    assert len(caps) == 9 and all(c.image_path is None for c in caps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stripped = CF.read_generated_captions(fungal_folder / "generated_captions.json", strip_prompt=True)
    assert CT.group_by_class(stripped)["mycelium"] == BODIES["mycelium"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda e: e[4].pop("description"), r"entry 4: missing field 'description'"),
        (lambda e: e[2].update(description="   "), r"entry 2: field 'description' is blank"),
        (lambda e: e[7].update(class_label="conidia"), r"entry 7: field 'class_label' has unknown class 'conidia'"),
        (lambda e: e[1].pop("class_label"), r"entry 1: missing field 'class_label'"),
        (lambda e: e[3].pop("image_path"), r"entry 3: missing field 'image_path'"),
        (lambda e: e[0].update(description=5), r"entry 0: field 'description' must be a string"),
        (lambda e: e.__setitem__(5, "text"), r"entry 5: expected a JSON object"),
    ],
)
def test_split_errors_name_file_entry_field(tmp_path, mutate, expected):
    entries = _split_entries()
    mutate(entries)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=expected) as info:
        CF.read_split_file(path)
    assert str(path) in str(info.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        CF.read_split_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"class_label": "spore",')
    with pytest.raises(ValueError, match="malformed JSON"):
        CF.read_generated_captions(bad)
    bad.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        CF.read_generated_captions(bad)
    gen = tmp_path / "gen.json"
    gen.write_text(json.dumps([{"description": "x", "class_label": "spore"}, {"class_label": "spore"}]))
    with pytest.raises(ValueError, match=r"gen.json: entry 1: missing field 'description'"):
        CF.read_generated_captions(gen)
    # Any class allowed when classes=None.
    gen.write_text(json.dumps([{"description": "x", "class_label": "conidia"}]))
    assert CF.read_generated_captions(gen, classes=None)[0].class_name == "conidia"


def test_jsonl_reader_and_errors(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_text(
        '{"class": "spore", "text": "Round cells.", "model": "m", "prompt_id": "spore/0"}\n'
        "\n"
        '{"class": "hyphae", "text": " Thin threads. "}\n'
    )
    caps = CF.read_jsonl_captions(path)
    assert [(c.class_name, c.text) for c in caps] == [("spore", "Round cells."), ("hyphae", "Thin threads.")]
    # A truncated last line (interrupted writer) is skipped with a warning.
    with open(path, "a") as f:
        f.write('{"class": "myc')
    with pytest.warns(UserWarning, match="line 4: ignoring truncated"):
        assert len(CF.read_jsonl_captions(path)) == 2
    with pytest.raises(ValueError, match="line 4: malformed JSON"):
        CF.read_jsonl_captions(path, allow_truncated_tail=False)
    cases = {
        '{"class": "spore"}\n': "line 2: missing field 'text'",
        '{"text": "x"}\n': "line 2: missing field 'class'",
        '{"class": "spore", "text": ""}\n': "line 2: field 'text' must be a non-blank string",
        'not json\n': "line 2: malformed JSON",
        '[1, 2]\n': "line 2: expected a JSON object",
    }
    for line, message in cases.items():
        path.write_text('{"class": "spore", "text": "ok"}\n' + line)
        with pytest.raises(ValueError, match=message) as info:
            CF.read_jsonl_captions(path)
        assert str(path) in str(info.value)
    path.write_text('{"class": "conidia", "text": "ok"}\n')
    with pytest.raises(ValueError, match="line 1: field 'class' has unknown class 'conidia'"):
        CF.read_jsonl_captions(path, classes=CF.FUNGALZSL_CLASSES)
    with pytest.raises(ValueError, match="not found"):
        CF.read_jsonl_captions(tmp_path / "nope.jsonl")


def test_registry(fungal_folder, tmp_path):
    assert {"fungalzsl_split", "fungalzsl_generated", "templates", "jsonl"} <= set(C.available_caption_sources())
    with pytest.raises(ValueError, match="unknown caption source 'nope'.*templates"):
        C.get_caption_source("nope")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = C.get_caption_source("fungalzsl_split", root=fungal_folder, split="validation")
        assert split.split == "val"
        assert split.by_class()["spore"] == BODIES["spore"]  # stripped by default
        raw = C.get_caption_source("fungalzsl_split", root=fungal_folder, split="test", strip_prompt=False)
        assert len(raw) == 9 and raw.by_class()["spore"][0].startswith("Describe the spores.")
        gen = C.get_caption_source("fungalzsl_generated", path=fungal_folder)
        assert gen.by_class()["mycelium"] == BODIES["mycelium"]
        gen_file = C.get_caption_source("fungalzsl_generated", path=fungal_folder / "generated_captions.json")
        assert len(gen_file) == len(gen)
    with pytest.raises(ValueError, match="unknown FungalZSL split"):
        C.get_caption_source("fungalzsl_split", root=fungal_folder, split="holdout")

    tpl = C.get_caption_source("templates")
    by = tpl.by_class()
    assert list(by) == list(CF.FUNGALZSL_CLASSES)
    assert len(C.TEMPLATES) >= 10
    assert all(len(v) == len(C.TEMPLATES) * len(C.STAGE_PHRASES[k]) for k, v in by.items())
    assert "a microscopy image of fungal spores." in by["spore"]
    assert all(isinstance(c, CT.Caption) and c.source == "templates" for c in tpl)
    five = C.get_caption_source("templates", classes="spore,germinating_spore,hyphae,sporulating_hyphae,mycelium")
    assert set(five.by_class()) == set(C.GROWTH_STAGES)
    # No two classes share a caption.
    texts = [c.text for c in five]
    assert len(texts) == len(set(texts))
    with pytest.raises(ValueError, match="no phrases for class"):
        C.get_caption_source("templates", classes=["conidia"])
    custom = C.get_caption_source("templates", classes=["conidia"], templates=["a photo of {}."],
                                  phrases={"conidia": ["conidia"]})
    assert custom.by_class() == {"conidia": ["a photo of conidia."]}

    path = tmp_path / "user.jsonl"
    path.write_text('{"class": "spore", "text": "A"}\n{"class": "spore", "text": " a "}\n{"class": "x", "text": "B"}\n')
    src = C.get_caption_source("jsonl", path=path)
    assert src.by_class() == {"spore": ["A", "a"], "x": ["B"]}
    assert C.get_caption_source("jsonl", path=path, dedup=True).by_class() == {"spore": ["A"], "x": ["B"]}
    assert src.deduplicated().by_class() == {"spore": ["A"], "x": ["B"]}


def test_dedup_and_stats():
    caps = [
        CT.Caption("spore", "Round  cells.", "s"),
        CT.Caption("spore", "round cells.", "s"),
        CT.Caption("hyphae", "ROUND CELLS.", "s"),
        CT.Caption("hyphae", "Thin threads that branch", "s"),
    ]
    assert CT.normalize_text("  Round\n cells. ") == "round cells."
    assert [c.text for c in CT.deduplicate(caps)] == ["Round  cells.", "ROUND CELLS.", "Thin threads that branch"]
    assert [c.text for c in CT.deduplicate(caps, across_classes=True)] == ["Round  cells.", "Thin threads that branch"]
    stats = CT.caption_stats(caps)
    assert stats["spore"] == CT.CaptionStats(count=2, unique=1, mean_words=2.0)
    assert stats["hyphae"].count == 2 and stats["hyphae"].unique == 2
    assert stats["hyphae"].mean_words == pytest.approx(3.0)
    assert CT.caption_stats({"a": []})["a"].mean_words == 0.0


def test_real_fungalzsl_folder(shared_data):
    root = shared_data / "fungalzsl"
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the FungalZSL captions are only on developer machines and CI)")
    expected = {"train": 4800, "val": 600, "test": 600}
    for split, count in expected.items():
        path = root / CF.FUNGALZSL_SPLITS[split]
        entries = json.loads(path.read_text())
        assert len(entries) == count
        # The trap the reader defends against: temperature is a constant per class.
        temps = defaultdict(set)
        for e in entries:
            temps[e["class_label"]].add(e["temperature"])
        assert set(temps) == set(CF.FUNGALZSL_CLASSES)
        assert all(len(v) == 1 for v in temps.values()), temps
        assert len({next(iter(v)) for v in temps.values()}) == 3  # and it separates the classes

        raw = CF.read_split_file(path)
        assert len(raw) == count
        assert {c.class_name for c in raw} == set(CF.FUNGALZSL_CLASSES)
        prefixes = CT.detect_prompt_prefixes(raw)
        for cls, prefix in prefixes.items():
            assert prefix.startswith("Describe "), (cls, prefix)
            assert prefix.endswith("."), (cls, prefix)
            assert all(c.text.startswith(prefix) for c in raw if c.class_name == cls)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stripped = CF.read_split_file(path, strip_prompt=True)
        assert 0.95 * count < len(stripped) <= count  # only prompt-only entries are dropped
        for cls, prefix in prefixes.items():
            texts = [c.text for c in stripped if c.class_name == cls]
            assert texts and all(t and not t.startswith(prefix) for t in texts)
        # After stripping, no sentence opens every description of a class.
        assert CT.detect_prompt_prefixes(stripped) == {c: "" for c in CF.FUNGALZSL_CLASSES}

    gen = CF.read_generated_captions(root / "generated_captions.json")
    assert len(gen) == 6000
    assert {c.class_name for c in gen} == set(CF.FUNGALZSL_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = C.get_caption_source("fungalzsl_generated", path=root)
        assert CT.detect_prompt_prefixes(src.captions()) == {c: "" for c in CF.FUNGALZSL_CLASSES}
        assert all(v.count > 1900 for v in src.stats().values())
