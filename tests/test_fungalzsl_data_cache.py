"""FungalZSLData keeps TFDS splits in memory when config.data.cache_in_memory is set.

The local job reads its renders from TFDS shards; its wall-time split showed the input pipeline
(array_record reads and decoding every epoch) at 16 % of the run, so the runlocal config caches
the decoded records. The cache must hand out exactly what the shards hold, with the class names.
"""

import numpy as np

from configs import fungalzsl as fungalzsl_config
from fungizsl.data.builders.fungal_growth_stages import FungalGrowthStages, GrowthStagesConfig
from fungizsl.fungalzsl.inputs import FungalZSLData


def _data(tmp_path, cache: bool) -> FungalZSLData:
    config = fungalzsl_config.get_config("arch=tiny,runlocal")
    config.unlock()
    config.data.kind = "tfds"
    config.data.tfds_dir = str(tmp_path)
    config.data.tfds_config = "tiny_cache"
    config.data.image_size = 32
    config.data.cache_in_memory = cache
    return FungalZSLData(config)


def test_tfds_splits_are_cached_with_the_same_records(tmp_path):
    build = GrowthStagesConfig(name="tiny_cache", image_size=32, train_per_class=3, val_per_class=1,
                               test_per_class=2, encoding="png")
    FungalGrowthStages(config=build, data_dir=tmp_path).download_and_prepare()

    on_disk, cached = _data(tmp_path, cache=False), _data(tmp_path, cache=True)

    assert cached.class_names == on_disk.class_names == ("spore", "hyphae", "mycelium")
    for split in ("train", "val", "test"):
        disk_source, memory_source = on_disk.source(split), cached.source(split)
        assert type(memory_source).__name__ == "InMemorySource"
        assert len(memory_source) == len(disk_source) == {"train": 9, "val": 3, "test": 6}[split]
        for i in range(len(disk_source)):
            want, got = disk_source[i], memory_source[i]
            assert int(got["label"]) == int(want["label"])
            assert got["scene"] == want["scene"]
            np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
