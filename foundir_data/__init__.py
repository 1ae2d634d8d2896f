"""foundir_data: the packed FoundIR format and everything that reads it.

``load_dataset`` and ``webdataset_urls`` are imported lazily: ``import foundir_data`` stays
cheap for the writer (``shard_tools``), which needs only the format and the taxonomy.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_dataset", "webdataset_urls", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load_dataset":
        from foundir_data.load import load_dataset  # start-up: `import foundir_data` stays light (see above)

        return load_dataset
    if name == "webdataset_urls":
        from foundir_data.urls import webdataset_urls  # start-up: as load_dataset

        return webdataset_urls
    raise AttributeError(f"module 'foundir_data' has no attribute {name!r}")
