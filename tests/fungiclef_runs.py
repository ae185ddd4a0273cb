"""Tiny FungiCLEF full-system settings shared by the tests that train one (seconds on a CPU)."""

from fungizsl.fungiclef import synthetic_species as syn

TINY_SPECIES = syn.SpeciesSetConfig(num_species=12, species_per_genus=3, image_size=32, val_fraction=0.6,
                                    test_fraction=0.8, seed=3)


def tiny_full_config(tfds_dir):
    """configs/fungiclef.py:runlocal shrunk to 32 px, a 3-step tower and 4 steps per stage."""
    from configs import fungiclef as fungiclef_config

    config = fungiclef_config.get_config("runlocal")
    config.data.tfds_dir = str(tfds_dir)
    f = config.features
    f.image_size, f.small_steps, f.shard_size, f.batch_size = 32, 3, 16, 16
    for stage in (config.stage1, config.stage2):
        stage.update(total_steps=4, batch_size=16, warmup_steps=1, log_every=2, checkpoint_every=2, eval_every=2)
    config.stage1.width = 32
    config.stage1.heads = 4
    config.model.qformer_width = 32
    config.data.text_max_length = 24
    return config
