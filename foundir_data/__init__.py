"""foundir_data: the packed FoundIR format and everything that reads it.

The public API comes from here: ``load_dataset``, ``webdataset_urls``, ``FoundIRStream``,
``StreamLoader``, ``get_pair`` and ``get_record``. Each is imported when first used, so
``import foundir_data`` stays cheap for the writer (``shard_tools``), which needs only the format
and the taxonomy.

The format is defined at the top of the package (``format``, ``index_schema``, ``taxonomy``,
``errors``, ``integrity``, ``limits``); its readers are the sub-packages ``remote`` (where a
folder lives), ``read`` (pairs and index rows, checked), ``sampling`` (the seeded order),
``streaming`` (the torch dataset) and ``output`` (what commands write); docs/ARCHITECTURE.md.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_dataset", "webdataset_urls", "FoundIRStream", "StreamLoader", "get_pair", "get_record",
           "__version__"]


def __getattr__(name: str) -> Any:
    # start-up: each import below happens on first use (see above); torch comes with the stream.
    if name == "load_dataset":
        from foundir_data.load import load_dataset  # start-up (above)

        return load_dataset
    if name == "webdataset_urls":
        from foundir_data.urls import webdataset_urls  # start-up (above)

        return webdataset_urls
    if name == "FoundIRStream":
        from foundir_data.streaming.stream import FoundIRStream  # start-up (above)

        return FoundIRStream
    if name == "StreamLoader":
        from foundir_data.streaming.loader import StreamLoader  # start-up (above)

        return StreamLoader
    if name in ("get_pair", "get_record"):
        from foundir_data.read import access  # start-up (above)

        return getattr(access, name)
    raise AttributeError(f"module 'foundir_data' has no attribute {name!r}")
