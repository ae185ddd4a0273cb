"""Config argument parsing: typed values and errors that name the key."""

import numpy as np
import pytest

from configs import fungalzsl
from configs.common import parse_arg
from fungizsl.data import synthetic
from fungizsl.data.builders.fungal_growth_stages import BUILDER_CONFIGS
from fungizsl.fungalzsl.inputs import FungalZSLData


def test_parse_arg_types_and_flags():
    arg = parse_arg("arch=b16,runlocal,steps=50,lr=3e-4", arch="b32", runlocal=False, steps=10, lr=1e-3)
    assert (arg.arch, arg.runlocal, arg.steps, arg.lr) == ("b16", True, 50, 3e-4)
    assert parse_arg("", arch="b32").arch == "b32"


@pytest.mark.parametrize("text,message", [
    ("arh=b16", "unknown config argument 'arh'"),
    ("steps=many", "config argument 'steps'"),
    ("steps", "needs a value"),
    ("runlocal=maybe", "expected a boolean"),
])
def test_parse_arg_errors_name_the_key(text, message):
    with pytest.raises(ValueError, match=message):
        parse_arg(text, arch="b32", runlocal=False, steps=10)


def test_experiment_configs_load_and_check_their_arguments():
    from configs import defungi, fungalzsl

    config = fungalzsl.get_config("arch=l14_336,init=/ckpt/clip,runlocal")
    assert (config.model.arch, config.data.image_size, config.model.init) == ("l14_336", 336, "/ckpt/clip")
    assert config.model.scan and config.sharding_rules
    for arch in ("l14", "l14_336"):  # the rules can only shard over an fsdp axis with more than one device
        large = fungalzsl.get_config(f"arch={arch}")
        assert large.mesh.fsdp == -1 or large.mesh.fsdp > 1, (arch, large.mesh.fsdp)
        assert any(axis == "fsdp" for _, axis in large.sharding_rules), large.sharding_rules
    small = fungalzsl.get_config("arch=b32")
    assert small.mesh.fsdp == 1 and not small.sharding_rules
    # the paper's L_image + L_text, selected on val; class-aware only for captions of a stage (the
    # default scene captions describe one image each: see the test below)
    assert (config.loss.combine, config.loss.class_aware) == ("sum", False)
    assert fungalzsl.get_config("arch=b32,captions=templates").loss.class_aware
    assert {e.split for e in config.evals.values() if e.every} == {"val"} and config.final_eval_split == "test"
    # shifted test sets run once, after training, on their own test_<condition> splits
    assert {e.split for e in config.evals.values() if not e.every} == {
        "test_paper", "test_gray", "test_zoom_out", "test_zoom_in", "test_size224", "test_size448",
        "test_unseen", "test_unseen_gray", "test_unseen_zoom_out", "test_unseen_zoom_in",
        "test_unseen_size224", "test_unseen_size448"}
    assert config.final_eval_checkpoint == "best" and config.data_seed == 0
    assert not config.data.captions_dir  # no default path outside the clone
    with pytest.raises(ValueError, match="'arch' must be one of"):
        fungalzsl.get_config("arch=b64")
    real = defungi.get_config("runlocal")
    assert real.data.tfds_builder == "image_folder" and set(real.data.class_descriptions) == {
        "BASH", "BBH", "GMA", "SHC", "TSH"}
    assert not [n for n in real.evals if n.startswith("robust_")]  # shifted growth-stage renders: not DeFungi


def test_fungalzsl_default_captions_are_per_image_scenes_with_heldout_prompts():
    from configs import fungalzsl

    for arg in ("arch=tiny,runlocal", "arch=b32"):
        config = fungalzsl.get_config(arg)
        assert config.data.captions == "scene" and config.data.captions_dir == ""
        assert tuple(config.evals.zeroshot.sources) == ("scene_heldout", "templates")
        assert not config.loss.class_aware  # each caption describes one image
    local = fungalzsl.get_config("arch=cnn_tiny,runlocal")  # launch/local.sh: issue 10's measured recipe
    assert local.loss.class_aware and local.data.image_size == fungalzsl.RUNLOCAL_CPU_SIZE == 96
    assert local.data.captions == "scene" and "robust_size128" in local.evals
    assert local.batch_size == 32 and local.eval_every * 2 == local.total_steps
    resnet = fungalzsl.get_config("arch=rn_tiny,runlocal")  # the rn_tiny rows of docs/results.md
    assert resnet.loss.class_aware and (resnet.batch_size, resnet.total_steps) == (64, 1200)
    paper = fungalzsl.get_config("arch=tiny,runlocal,captions=fungalzsl_split,data_dir=/data/fungalzsl")
    assert paper.data.captions_dir == "/data/fungalzsl" and paper.loss.class_aware
    assert tuple(paper.evals.zeroshot.sources) == ("fungalzsl_split", "templates")


def test_rendered_training_data_is_the_randomised_renderer_the_local_job_builds():
    """config.data.randomised draws the realistic preset with synthetic.RANDOMISED, the same
    settings as the builder config launch/local.sh renders (one rule); off, the plain renderer."""
    config = fungalzsl.get_config("arch=tiny,runlocal,captions=templates")
    config.data.cache_in_memory = False  # render on access: only the records looked at
    assert config.data.randomised and config.data.augment == "microscopy"  # stage-level captions crop
    assert fungalzsl.get_config("arch=cnn_tiny,runlocal").data.augment == "microscopy_randomised"
    render = FungalZSLData(config).source("train").render_config
    assert (render.magnification, render.field_fraction, render.white_background) == ((0.3, 3.2), 0.3, True)
    built = {c.name: c for c in BUILDER_CONFIGS}["realistic_224_randomised"].render_config()
    assert (built.magnification, built.field_fraction, built.white_background) == ((0.3, 3.2), 0.3, True)
    record = FungalZSLData(config).source("train")[4]  # image 1 of stage 1 (three stages)
    expected = synthetic.render_image("hyphae", 1, config.data_seed, render)
    assert np.array_equal(record["image"], expected)
    config.data.randomised = False
    plain = FungalZSLData(config).source("train").render_config
    assert (plain.magnification, plain.field_fraction, plain.white_background) == ((0.6, 1.7), 0.0, False)
