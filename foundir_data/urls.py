"""Shard URLs of a packed folder for plain WebDataset / ``datasets`` pipelines.

:func:`webdataset_urls` reads the manifest (nothing is listed) and returns one URL per
full-frame (or tile) shard of a split and config, in manifest order, in the form the other
readers open:

* a local folder: absolute paths;
* ``https://...`` and ``hf://datasets/...``: plain HTTP(S) URLs (the Hub's
  ``{HF_ENDPOINT}/datasets/{repo}/resolve/{revision}/{path}``), which WebDataset opens with
  ``curl`` and ``datasets`` with fsspec;
* any other fsspec protocol (``s3://``, ...): a WebDataset ``pipe:`` URL running
  ``python -m foundir_data.urls LOCATION SHARD``, which streams the shard through
  :class:`~foundir_data.remote.store.Store` (fsspec, the endpoint and credentials from the
  environment, retries and resume, size and sha256 checked against the manifest) to stdout.
  WebDataset has no S3 opener of its own, and a ``pipe:`` URL works in every DataLoader
  worker without registering anything.

With ``opener="pipe"`` every remote shard goes through the helper: use it for a private Hub
repo (the helper reads the token from ``HF_TOKEN`` or your login; a token is never put in a
URL, where it would end up in logs and in every sample's ``__url__``).

Every image member is named ``lq.png``/``gt.png`` whatever its bytes are (``format.py``), so::

    import webdataset as wds
    from foundir_data import webdataset_urls

    urls = webdataset_urls("s3://bucket/foundir", split="train", config="isolated")
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("lq.png", "gt.png", "json")

gives PIL images and the record dict, and for local and HTTP(S) URLs
``datasets.load_dataset("webdataset", data_files={"train": urls}, streaming=True)`` decodes
both images too (``datasets`` cannot open ``pipe:`` URLs; on S3 use
``foundir_data.load_dataset``, see docs/streaming.md).
"""

from __future__ import annotations

import os
import shlex
import sys

from foundir_data import format as fmt
from foundir_data.load import config_types, resolve_location
from foundir_data.remote.store import Store

#: ``opener`` values of :func:`webdataset_urls`.
OPENERS = ("auto", "pipe")


def pipe_url(location: str, rel: str) -> str:
    """The WebDataset ``pipe:`` URL that streams shard ``rel`` of ``location`` to stdout."""
    args = [sys.executable, "-m", "foundir_data.urls", location, rel]
    return "pipe:" + " ".join(shlex.quote(a) for a in args)


def webdataset_urls(location: str | None = None, split: str = "train", config: str = "all", *,
                    layout: str = fmt.LAYOUT_FULL, opener: str = "auto", token: str | None = None,
                    storage_options: dict | None = None) -> list[str]:
    """The shard URLs of a split and config, for ``wds.WebDataset(urls)``.

    Args:
        location: A packed folder, ``https://``, ``hf://datasets/<org>/<name>[@rev][/subdir]``
            or ``s3://`` location; None: ``$FOUNDIR_DATA`` or the project's Hub repo (as
            ``load_dataset("foundir")``).
        split: ``train`` or ``test``.
        config: ``all``, ``isolated``, ``coupled`` or one degradation type name.
        layout: ``full`` (full frames) or ``tile``.
        opener: ``auto`` (plain paths/URLs for local and HTTP(S)/Hub, ``pipe:`` for other
            protocols) or ``pipe`` (``pipe:`` for every remote location).
        token: Hub token used to read the manifest (the pipe helper finds its own).
        storage_options: fsspec options used to read the manifest. ``pipe:`` helpers run in
            their own process and take the endpoint and credentials from the environment
            (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), not from these options.

    Returns:
        One URL per shard, in manifest order.

    Raises:
        ValueError: an unknown config, split, layout or opener, or no shard selected (the
            message lists what the folder has).
    """
    if opener not in OPENERS:
        raise ValueError(f"opener must be one of {OPENERS}, got {opener!r}")
    if layout not in fmt.LAYOUTS:
        raise ValueError(f"layout must be one of {fmt.LAYOUTS}, got {layout!r}")
    store = Store.open(resolve_location("foundir", location), token=token, storage_options=storage_options)
    manifest = store.manifest()
    shards = manifest.select(split=split, degradations=config_types(config), layout=layout)
    if not shards:
        raise ValueError(f"{store.location}: no {layout} shards of split {split!r} and config {config!r}; "
                         f"the manifest has splits {manifest.splits} and layouts {manifest.layouts}")
    if store.is_local or (opener == "auto" and store.protocol in ("http", "hf")):
        return [store.url(s.path) for s in shards]
    return [pipe_url(store.location, s.path) for s in shards]


def main(argv: list[str] | None = None) -> int:
    """``python -m foundir_data.urls LOCATION SHARD``: stream one shard to stdout (the ``pipe:``
    helper of :func:`webdataset_urls`); size and sha256 are checked against the manifest."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m foundir_data.urls LOCATION SHARD", file=sys.stderr)
        return 2
    location, rel = args
    out = sys.stdout.buffer
    try:
        store = Store.open(location)
        if store.shard_info(rel) is None:
            raise ValueError(f"{store.url(rel)} is not a shard listed in the manifest")
        with store.open_shard(rel) as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)
        out.flush()
    except BrokenPipeError:  # the reader stopped early (e.g. islice): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # no second error at exit
        return 141  # WebDataset's pipe opener ignores this status (SIGPIPE's)
    except Exception as e:  # one line, no traceback: WebDataset shows it with the exit status
        print(f"foundir_data.urls: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
