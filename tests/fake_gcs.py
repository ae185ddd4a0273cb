"""An offline stand-in for Google Cloud Storage, so that `gs://` workdirs can be tested without network.

`install(root)` makes `gs://bucket/path` live at `<root>/bucket/path` for the two layers that touch
storage: etils.epath (through fsspec, protocol "gs"/"gcs", here a local filesystem rooted at
`root`) and Orbax's TensorStore array I/O (paths are mapped to that place before Orbax builds its
TensorStore spec; a bucket-property query of the GCS client is answered). Everything else in the
code under test sees only `gs://` strings, so any
`open()`/`os.makedirs()` on a workdir path would create a stray local `gs:` folder instead (the
tests check that none appears).
"""

import os

import fsspec
from fsspec.implementations.local import LocalFileSystem


def install(root: str) -> None:
    root = os.path.abspath(root)

    class FakeGCS(LocalFileSystem):
        protocol = ("gs", "gcs")
        root_marker = ""

        def __init__(self, *args, finalize_on_close=None, **kwargs):
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            path = os.fspath(path)
            for prefix in ("gs://", "gcs://"):
                if path.startswith(prefix):
                    return os.path.join(root, path[len(prefix):]).rstrip("/") or root
            return super()._strip_protocol(path)

        def glob(self, path, **kwargs):  # epath puts "gs://" back in front of what glob returns
            return [os.path.relpath(p, root) for p in super().glob(path, **kwargs)]

    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()

    from orbax.checkpoint._src.path import gcs_utils
    from orbax.checkpoint._src.serialization import tensorstore_utils

    # TensorStore: where Orbax would build a GCS kvstore spec for gs://bucket/x, it builds the
    # spec it uses for local folders, at <root>/bucket/x.
    normalize = tensorstore_utils._normalize_path
    tensorstore_utils._normalize_path = lambda path: normalize(FakeGCS._strip_protocol(str(path)))
    # A bucket property Orbax asks the GCS client library for (flat namespace here).
    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
