"""The two generators of issue 21: the FungalZSL authors' generator (the ``paper`` preset,
fungizsl.data.fungalzsl_generator) and the independent, evaluation-only one
(fungizsl.data.unseen_renderer): determinism, the authors' measurable facts, what the unseen
generator draws, that training never reaches it, and that its evaluation splits resolve."""

import ast
import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fungizsl.data import fungalzsl_generator as fg
from fungizsl.data import robustness, scene_captions, synthetic, unseen_renderer
from fungizsl.data.synthetic import STAGES, RenderConfig, render_image, render_scene

PAPER_96 = RenderConfig(image_size=96, preset="paper")
PAPER_224 = RenderConfig(image_size=224, preset="paper")
UNSEEN_64 = unseen_renderer.UnseenConfig(image_size=64)
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fungizsl"


def _digest(images) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(im).tobytes() for im in images)).hexdigest()


def _components(mask: np.ndarray) -> np.ndarray:
    """Labels of the 8-connected components of a boolean mask (0: background), by label propagation."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        padded = np.pad(labels, 1)
        best = labels.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = padded[1 + dy: 1 + dy + mask.shape[0], 1 + dx: 1 + dx + mask.shape[1]]
                best = np.where(mask & (shifted > best), shifted, best)
        if np.array_equal(best, labels):
            return labels
        labels = best


def _hue(rgb: np.ndarray) -> np.ndarray:
    x = np.asarray(rgb, np.float64).reshape(-1, 3) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = mx - mn + 1e-9
    r, g, b = x.T
    h = 60.0 * np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return np.where(h > 180, h - 360, h)


# ---------------------------------------------------------------------------------------------- determinism


def test_both_generators_are_pure_functions_of_their_arguments():
    for stage in STAGES:
        assert np.array_equal(render_image(stage, 3, 5, PAPER_96), render_image(stage, 3, 5, PAPER_96))
        a = unseen_renderer.render_unseen(stage, 3, 5, UNSEEN_64)
        b = unseen_renderer.render_unseen(stage, 3, 5, UNSEEN_64)
        assert np.array_equal(a[0], b[0]) and a[1] == b[1]
        assert not np.array_equal(a[0], unseen_renderer.render_unseen(stage, 4, 5, UNSEEN_64)[0])
        assert not np.array_equal(a[0], unseen_renderer.render_unseen(stage, 3, 6, UNSEEN_64)[0])


def test_pixels_identical_in_a_fresh_process():
    code = (
        "import hashlib, numpy as np\n"
        "from fungizsl.data import synthetic, unseen_renderer\n"
        "p = synthetic.RenderConfig(image_size=48, preset='paper')\n"
        "u = unseen_renderer.UnseenConfig(image_size=48)\n"
        "ims = [synthetic.render_image(s, 2, 9, p) for s in synthetic.STAGES]\n"
        "ims += [unseen_renderer.render_unseen(s, 2, 9, u)[0] for s in synthetic.STAGES]\n"
        "print(hashlib.sha256(b''.join(np.ascontiguousarray(i).tobytes() for i in ims)).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    p, u = RenderConfig(image_size=48, preset="paper"), unseen_renderer.UnseenConfig(image_size=48)
    assert out == _digest([render_image(s, 2, 9, p) for s in STAGES]
                          + [unseen_renderer.render_unseen(s, 2, 9, u)[0] for s in STAGES])


# ---------------------------------------------------------------------------------------------- the authors' generator


def _field(stage: str, index: int, length_jitter: float = 0.2) -> fg.Field:
    return fg.build_field(synthetic.image_rng(stage, index, 0), stage, length_jitter)


def test_every_field_holds_ten_growth_centres_in_the_middle_square():
    for i in range(12):
        spores = _field("spore", i)
        assert len(spores.cells) == fg.CENTRES and not spores.colonies
        hyphae, mycelium = _field("hyphae", i), _field("mycelium", i)
        extra = sum(c[4] == "spore" for c in hyphae.cells)
        assert len(hyphae.colonies) == fg.CENTRES and extra in (0, 1, 2)  # include_spores: 1 or 2, half the time
        assert len(mycelium.colonies) in (10, 11, 12)  # include_hyphae: 1 or 2 hyphal colonies, half the time
        for field in (spores, hyphae, mycelium):
            xy = np.array([c[:2] for c in field.cells])
            assert xy.min() >= fg.FIELD_RANGE[0] and xy.max() <= fg.FIELD_RANGE[1]


def test_spore_renders_show_about_ten_separate_spores():
    counts = []
    for i in range(8):
        image, scene = render_scene("spore", i, 0, PAPER_224)
        assert scene.spores == 10 and scene.branches == 0 and scene.colonies == 0
        counts.append(len(np.unique(_components(image.min(-1) < 200))) - 1)
    assert 7 <= min(counts) and max(counts) <= 10 and np.mean(counts) >= 8.5  # touching spores merge


def test_hyphae_are_clusters_of_a_few_pixels_at_96_px():
    extents = []
    for i in range(10):
        for segments, _ in _field("hyphae", i).colonies:
            ends = segments[:, 0:4].reshape(-1, 2)
            extents.append((ends.max(0) - ends.min(0)).max() * 96)
    assert 4 < np.median(extents) < 12 and np.percentile(extents, 95) < 20  # px across, at 96 px
    image, scene = render_scene("hyphae", 0, 0, PAPER_96)
    assert scene.colonies == 10 and scene.branch_depth == 3 and scene.initial_branches == 4
    assert np.mean(image.min(-1) == 255) > 0.9  # a white field with small clusters


def test_branching_follows_the_script():
    tree = fg.grow(np.random.default_rng(0), 0.5, 0.5, fg.HYPHA, length_jitter=0.0)
    first = np.hypot(*(tree[0, 2:4] - tree[0, 0:2]))
    assert first == pytest.approx(0.7 * fg.HYPHA.length)  # drawn at 0.7 of the length (stored copy: no jitter)
    levels = tree[:, 5]
    assert levels.max() == fg.HYPHA.depth - 1
    # 3 to 5 children per branch; the initial branches start at the centre
    at_centre = np.all(np.isclose(tree[:, 0:2], 0.5), axis=1)
    assert at_centre.sum() == 1 + fg.HYPHA.initial
    for depth in range(20):
        field = _field("mycelium", depth)
        segments = np.concatenate([s for s, _ in field.colonies])
        # 10 levels are asked for, but growth stops below a length of 0.005: 4 or 5 levels are drawn
        assert 3 <= segments[:, 5].max() + 1 <= 6 and field.initial_branches == fg.MYCELIUM.initial


def test_colour_lies_between_the_stage_end_colours_and_runs_yellow_orange_red():
    mean_hue = {}
    for stage in STAGES:
        ends = _hue(np.array(fg.STAGE_COLOURS[stage]) * 255)
        pixels = np.concatenate([im[im.min(-1) < 235] for im in (render_image(stage, i, 0, PAPER_96)
                                                                for i in range(5))])
        hues = _hue(pixels)
        assert ends.min() - 1.5 < np.percentile(hues, 2) and np.percentile(hues, 98) < ends.max() + 1.5, stage
        mean_hue[stage] = hues.mean()
    assert mean_hue["spore"] > mean_hue["hyphae"] > mean_hue["mycelium"]
    assert fg.stage_colour("mycelium", 0.0) == (1.0, 0.5, 0.0) and fg.stage_colour("mycelium", 1.0) == (1.0, 0.0, 0.0)


def test_painted_fractions_match_the_authors_drawings():
    """Measured on matplotlib renderings of the same procedure (8 images per stage, 96 px): spores
    0.0105, hyphae 0.0123, mycelium 0.135 of the field painted (1 - min channel)."""
    painted = {s: np.mean([(1 - render_image(s, i, 0, PAPER_96).min(-1) / 255.0).mean() for i in range(12)])
               for s in STAGES}
    assert painted["spore"] == pytest.approx(0.0105, rel=0.15)
    assert painted["hyphae"] == pytest.approx(0.0123, rel=0.2)
    assert painted["mycelium"] == pytest.approx(0.135, rel=0.2)


# ---------------------------------------------------------------------------------------------- the unseen generator


def test_unseen_generator_draws_the_stages_in_styles_of_its_own():
    scenes = {s: [unseen_renderer.render_unseen(s, i, 1, UNSEEN_64)[1] for i in range(24)] for s in STAGES}
    assert all(sc.branches == 0 and sc.spores > 0 for sc in scenes["spore"])
    assert all(sc.branches > 0 for sc in scenes["hyphae"] + scenes["mycelium"])
    cover = {s: np.median([sc.coverage for sc in scenes[s]]) for s in STAGES}
    assert cover["mycelium"] > 2.5 * cover["hyphae"]
    tips = {s: np.median([unseen_renderer.build_scene(unseen_renderer.unseen_rng(s, i, 1), s, 64, 1.0).facts["tips"]
                          for i in range(8)]) for s in ("hyphae", "mycelium")}
    assert tips["mycelium"] > 5 * tips["hyphae"]  # a network of many tips, against a few young filaments
    looks = {sc.background for group in scenes.values() for sc in group}
    assert looks == set(unseen_renderer.CAPTION_BACKGROUND.values())
    assert all(sc.preset == "unseen" for group in scenes.values() for sc in group)
    # every scene can be captioned (the evaluation pipeline writes one caption per test image)
    assert all(scene_captions.caption(sc, np.random.default_rng(0)) for group in scenes.values() for sc in group)


def test_unseen_colour_does_not_tell_the_stage():
    feats = [np.array([unseen_renderer.render_unseen(s, i, 2, UNSEEN_64)[0].reshape(-1, 3).mean(0)
                       for i in range(18)]) for s in STAGES]
    x, y = np.concatenate(feats), np.repeat(np.arange(3), 18)
    correct = 0
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        centroids = np.array([x[rest & (y == c)].mean(0) for c in range(3)])
        correct += int(np.argmin(((centroids - x[i]) ** 2).sum(1)) == y[i])
    assert correct / len(x) < 0.6  # chance is 1/3


@pytest.mark.parametrize("stage", unseen_renderer.ALL_STAGES)
def test_unseen_generator_draws_every_stage(stage):
    image, scene = unseen_renderer.render_unseen(stage, 1, 0, unseen_renderer.UnseenConfig(image_size=48,
                                                                                         stages=(stage,)))
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and image.std() > 3.0
    assert scene.stage == stage


def test_render_command_shows_the_unseen_generator(tmp_path, capsys):
    from PIL import Image

    from fungizsl import cli
    from fungizsl.data import contact_sheets

    out = tmp_path / "unseen.png"
    assert cli.main(["render", "--out", str(out), "--preset", "unseen", "--size", "40", "--per-stage", "2"]) == 0
    x, y = contact_sheets.tile_origin(2, 1, 40)  # row "mycelium", second sample
    tile = np.asarray(Image.open(out).convert("RGB"))[y:y + 40, x:x + 40]
    want = unseen_renderer.render_unseen("mycelium", 1, 0, unseen_renderer.UnseenConfig(image_size=40))[0]
    assert np.array_equal(tile, want)
    assert cli.main(["render", "--out", str(out), "--preset", "unseen", "--captions"]) == 2
    assert "--captions" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- evaluation splits


def test_unseen_splits_resolve_and_shift_the_same_scenes():
    base = RenderConfig(image_size=48)
    names = ["test_unseen", "test_unseen_gray", "test_unseen_zoom_out", "test_unseen_zoom_in", "test_unseen_size64",
             "test_paper", "test_colony"]
    sources = {n: robustness.ShiftedSource(robustness.condition_of(n), STAGES, 2, seed=3, base=base) for n in names}
    plain, gray = sources["test_unseen"][4], sources["test_unseen_gray"][4]
    assert np.array_equal(robustness.to_gray(plain["image"]), gray["image"]) and plain["label"] == gray["label"]
    mag = {n: json.loads(sources[n][4]["scene"])["magnification"] for n in names[:5]}
    assert mag["test_unseen_zoom_out"] < robustness.ZOOM_OUT[1] and mag["test_unseen_zoom_in"] > robustness.ZOOM_IN[0]
    assert sources["test_unseen_size64"][0]["image"].shape == (64, 64, 3)
    assert json.loads(sources["test_paper"][0]["scene"])["preset"] == "paper"
    assert json.loads(sources["test_colony"][0]["scene"])["preset"] == "colony"
    for bad in ("unseen_paper", "unseen_unseen", "unseen_size8", "unseen_blurry"):
        with pytest.raises(ValueError, match="robustness condition"):
            robustness.check_condition(bad)


def test_every_fungalzsl_config_reports_the_unseen_generator():
    from configs import fungalzsl

    for arg in ("arch=cnn_tiny,runlocal", "arch=b32", "arch=l14_336"):
        config = fungalzsl.get_config(arg)
        splits = {e.split for e in config.evals.values() if not e.every}
        conditions = {robustness.condition_of(s) for s in splits}  # every name resolves
        assert {"paper", "unseen", "unseen_gray", "unseen_zoom_out", "unseen_zoom_in"} <= conditions
        size = config.data.image_size
        assert {f"unseen_size{round(size * 2 / 3)}", f"unseen_size{round(size * 4 / 3)}"} <= conditions
        # run once, after training: never during it, never for selection
        assert not [e.split for e in config.evals.values() if e.every and e.split.startswith("test")]


def test_summary_names_the_unseen_generator_number():
    from fungizsl.fungalzsl import trainer

    results = {"zeroshot/accuracy": 0.9, "zeroshot/mean_per_class_accuracy": 0.9, "zeroshot/confusion": [[1]],
               "zeroshot/per_class/spore": 0.9, "robust_unseen/accuracy": 0.4,
               "robust_unseen/mean_per_class_accuracy": 0.4, "robust_unseen/per_class/spore": 0.4}
    results.update({f"retrieval/class/{d}/recall@{k}": 0.5 for d in ("image_to_text", "text_to_image") for k in (1, 5)})
    summary = trainer.summarise(results, ("spore",), {"robust_unseen": "unseen"})
    assert summary["unseen_generator_zeroshot_accuracy"] == 0.4 and summary["robustness"]["unseen"]


# ---------------------------------------------------------------------------------------------- never in training


def _module_imports() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` packages up
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m.startswith("fungizsl")}
    return graph


def _closure(graph: dict[str, set[str]], roots) -> set[str]:
    seen, todo = set(), [r for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        todo.extend(graph[name])
        todo.extend(p for p in (name.rpartition(".")[0],) if p)  # importing a.b runs a/__init__
    return seen


UNSEEN_MODULES = {"fungizsl.data.unseen_renderer", "fungizsl.data.unseen_growth"}


def test_training_code_never_imports_the_unseen_generator():
    graph = _module_imports()
    training = ["fungizsl.data.pipeline", "fungizsl.data.synthetic", "fungizsl.data.sources", "fungizsl.data.augment",
                "fungizsl.data.scene_pipeline", "fungizsl.data.builders.fungal_growth_stages", "fungizsl.train.core"]
    assert UNSEEN_MODULES <= _closure(graph, ["fungizsl.data.robustness"])  # the check can see them
    assert not _closure(graph, training) & UNSEEN_MODULES
    importers = {name for name, deps in graph.items() if deps & UNSEEN_MODULES} - UNSEEN_MODULES
    # the evaluation splits, and the contact-sheet command that shows its images
    assert importers == {"fungizsl.data.robustness", "fungizsl.data.contact_sheets"}
    assert not [n for n in importers if n.startswith("fungizsl.fungalzsl")]


def test_a_fungalzsl_run_renders_unseen_images_only_for_its_test_unseen_splits(monkeypatch):
    from configs import fungalzsl
    from fungizsl.fungalzsl import inputs

    def refuse(*args, **kwargs):
        raise AssertionError("the unseen generator was asked for a training or validation image")

    config = fungalzsl.get_config("arch=tiny,runlocal")
    config.data.update(image_size=32, per_class=dict(train=2, val=1, test=1), robustness_per_class=1,
                       cache_in_memory=False)
    monkeypatch.setattr(unseen_renderer, "render_unseen", refuse)
    data = inputs.FungalZSLData(config)
    for split in ("train", "val", "test", "test_paper", "test_gray"):
        source = data.source(split)
        assert [source[i]["label"] for i in range(len(source))]
    with pytest.raises(AssertionError, match="unseen generator"):
        data.source("test_unseen")[0]
