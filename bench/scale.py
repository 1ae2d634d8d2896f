"""Issue 18: a rank's start-up and one lookup against the number of index rows, before and after.

Writes a synthetic packed-folder skeleton per size (``bench/plan_scale.py``'s columns; no
tar files): ``--rows`` rows in shards of ``--per-shard`` rows, with everything format version 3
adds (one index part per shard, the key lookup), streamed shard by shard so writing 30M rows
stays small. Its manifest says format version 2, so the code of ``main`` (before: one
``index/pairs.parquet`` that every reader loads whole) reads the same folder; this branch
(after) reads the parts. Each measurement runs in a fresh child process with
``PYTHONPATH`` = the code measured:

* ``startup``: ``FoundIRStream(...)`` for rank 0 of 64, then the index rows (offsets, hashes)
  of its first batch: what a rank does before its first read. CPU s (``process_time``),
  RSS growth (peak RSS ``VmHWM`` after minus RSS before, the peak reset after the imports
  through ``/proc/self/clear_refs``), index bytes read;
* ``lookup``: ``get_record(store, key)`` (``get_pair`` minus the image range read, which is
  one range request either way) on S3: moto's server on loopback, its request recorder
  counting requests (GET and HEAD, after the manifest) and bytes; CPU s and RSS growth of
  the child. Only the files a lookup may read are uploaded (after: the key list, the key file
  and the part; before: the whole index).

``--folder PATH`` measures instead ``load_dataset(PATH, streaming=True)`` to its first example
on a real packed folder (``bench/release_run.py`` makes one), after and before.

Time is CPU seconds of the child, not wall (the machine is shared: bench/README.md,
"Machine and method"). Run::

    git worktree add --detach /tmp/base 1313017     # the code before issue 18
    PYTHONPATH=$PWD python bench/scale.py --rows 1000000 15000000 30000000 --before /tmp/base \\
        --before-max 15000000 --work /tmp/scale

``--before DIR``: a checkout of the code to compare with (omit for after only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]


def _reset_peak() -> float:
    """Reset this process's RSS high-water mark to its current RSS (Linux ``clear_refs`` 5),
    so a growth measured after imports is not hidden by their transient peak; returns MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) / 1024


def write_skeleton(root: Path, rows: int, per_shard: int) -> dict:
    """Manifest, index, per-shard parts and key lookup of ``rows`` synthetic rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from foundir_data import format as fmt
    from foundir_data import taxonomy
    from foundir_data.sampling.counts import hamilton

    w = np.array([t.test_ids[1] - t.test_ids[0] + 1 for t in taxonomy.TYPES], np.float64)
    per_type = hamilton(rows, w)
    plan = []  # (path, type, count), in sorted path order: keys then sort like the parts
    for t, n in zip(taxonomy.TYPES, per_type):
        for s in range(-(-int(n) // per_shard)):
            plan.append((fmt.shard_relpath(fmt.LAYOUT_FULL, "train", t.name, s), t, min(per_shard, int(n) - s * per_shard)))
    plan.sort(key=lambda p: p[0])
    (root / fmt.KEYS_DIR).mkdir(parents=True, exist_ok=True)
    infos, pending, keys_buf, key_files = [], [], [], []
    writer, row0 = None, 0

    def flush_keys(force: bool = False) -> None:
        nonlocal keys_buf
        while keys_buf and (force or sum(len(k) for k in keys_buf) >= fmt.KEYS_ROWS):
            t = pa.concat_tables(keys_buf)
            head, rest = t.slice(0, fmt.KEYS_ROWS), t.slice(fmt.KEYS_ROWS)
            rel = f"{fmt.KEYS_DIR}/{len(key_files):05d}.parquet"
            pq.write_table(head, root / rel)
            key_files.append({"path": rel, "first": head["key"][0].as_py(), "last": head["key"][-1].as_py(), "rows": len(head)})
            keys_buf = [rest] if len(rest) else []
            if force and not keys_buf:
                break

    for path, t, c in plan:
        r = np.arange(row0, row0 + c)
        within = np.arange(c, dtype=np.int32)
        off = within.astype(np.int64) * 10_000_000 + 512
        n = pa.array(np.zeros(c, np.int64))
        part = pa.table({
            "key": pa.array(np.char.add("pair_", np.char.zfill(r.astype("U10"), 10)).astype(object), pa.string()),
            "split": pa.array(["train"]).take(n), "degradation": pa.array([t.name]).take(n),
            "degradation_id": pa.array(np.full(c, t.index, np.int16)), "layout": pa.array(["full"]).take(n),
            "shard": pa.array([path]).take(n), "sample_index": pa.array(within),
            "lq_offset": pa.array(off), "lq_size": pa.array(np.full(c, 4_000_000, np.int64)),
            "gt_offset": pa.array(off + 4_000_512), "gt_size": pa.array(np.full(c, 4_000_000, np.int64)),
            "lq_sha256": pa.array(np.char.zfill(r.astype("U64"), 64).astype(object), pa.string()),
            "gt_sha256": pa.array(np.char.zfill((r + rows).astype("U64"), 64).astype(object), pa.string()),
            "source_key": pa.nulls(c, pa.string()),
        })
        # Every other column of the schema, null (readers of the whole index check the schema).
        part = pa.table({f.name: part[f.name] if f.name in part.column_names else pa.nulls(c, f.type)
                         for f in fmt.INDEX_SCHEMA}).cast(fmt.INDEX_SCHEMA)
        dest = root / fmt.index_part(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, dest)
        data = dest.read_bytes()
        infos.append(fmt.ShardInfo(path, "train", t.name, fmt.LAYOUT_FULL, c, c * 10_000_000, "0" * 64,
                                   index_bytes=len(data), index_sha256=hashlib.sha256(data).hexdigest()))
        pending.append(part)
        keys_buf.append(part.select(["key", "shard", "sample_index"]))
        if sum(len(p) for p in pending) >= 65536:
            writer = writer or pq.ParquetWriter(root / fmt.INDEX_FILE, part.schema)
            writer.write_table(pa.concat_tables(pending))
            pending = []
        flush_keys()
        row0 += c
    writer = writer or pq.ParquetWriter(root / fmt.INDEX_FILE, pending[0].schema)
    if pending:
        writer.write_table(pa.concat_tables(pending))
    writer.close()
    flush_keys(force=True)
    (root / fmt.KEYS_FILE).write_text(json.dumps({"rows": rows, "files": key_files}))
    man = fmt.Manifest(shards=infos, num_samples=rows, format_version=2, keys=fmt.KEYS_FILE)
    (root / fmt.MANIFEST_FILE).write_text(man.to_json())
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return {"rows": rows, "shards": len(infos), "index_bytes": size(root / fmt.INDEX_FILE),
            "parts_bytes": size(root / fmt.INDEX_SHARDS_DIR), "keys_bytes": size(root / fmt.KEYS_DIR),
            "manifest_bytes": size(root / fmt.MANIFEST_FILE)}


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def child_startup(root: str) -> dict:
    import foundir_data.remote.store  # noqa: F401 - imports are not start-up
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401
    from foundir_data.streaming.stream import FoundIRStream

    rss0, c0, io0 = _reset_peak(), time.process_time(), _rchar()
    st = FoundIRStream(root, schedule="incremental", batch_size=512, rank=0, world_size=64, crop=256)
    step, rows = next(st.plan.batches(0, 64))
    if hasattr(st, "_shard_rows"):  # after: the first batch's index rows come from the parts
        for c in np.unique(st.plan.locate(rows)[0]):
            st._shard_rows(int(c))
    else:  # before: already in memory
        _ = st._off[rows], st._sha[rows]
    out = {"cpu_s": time.process_time() - c0, "rss_growth_mb": _status_mb("VmHWM") - rss0, "rchar": _rchar() - io0,
           "pairs": st.num_pairs}
    parts = getattr(st, "_parts", None)
    if parts is not None:
        out["index_bytes_read"] = parts.bytes_read
    else:  # the column chunks of index/pairs.parquet that the stream's read_table reads
        import pyarrow.parquet as pq
        from foundir_data.streaming import stream

        md = pq.ParquetFile(Path(root) / "index" / "pairs.parquet").metadata
        cols = set(c for c in stream._COLUMNS if c != "source_key")
        out["index_bytes_read"] = sum(md.row_group(i).column(j).total_compressed_size for i in range(md.num_row_groups)
                                      for j in range(md.num_columns) if md.row_group(i).column(j).path_in_schema in cols)
    return out


def child_lookup(url: str, key: str) -> dict:
    import foundir_data.read.access as access
    from foundir_data.remote.store import Store

    Store.open(url).manifest()  # warm the s3fs client and imports, not the lookup
    rss0, c0 = _reset_peak(), time.process_time()
    rec = access.get_record(url, key)
    assert rec["key"] == key
    return {"cpu_s": time.process_time() - c0, "rss_growth_mb": _status_mb("VmHWM") - rss0}


def child_first(folder: str) -> dict:
    """``load_dataset(folder, streaming=True)`` to its first example."""
    import datasets  # noqa: F401 - imports are not the cost measured
    from foundir_data.load import load_dataset

    rss0, c0 = _reset_peak(), time.process_time()
    ex = next(iter(load_dataset(folder, split="train", streaming=True)))
    assert ex["key"]
    return {"cpu_s": time.process_time() - c0, "rss_growth_mb": _status_mb("VmHWM") - rss0}


def folder_view_v2(folder: Path, view: Path) -> Path:
    """The packed ``folder`` as a version-2 folder (symlinks, manifest saying version 2), for
    the code before, which reads versions 1 and 2 (version 3 has the same members)."""
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for p in folder.iterdir():
        if p.name != "manifest.json":
            (view / p.name).symlink_to(p.resolve())
    m = json.loads((folder / "manifest.json").read_text())
    m["format_version"] = 2
    (view / "manifest.json").write_text(json.dumps(m))
    return view


def run_child(code: Path, *args: str, env: dict | None = None) -> dict:
    e = {**os.environ, **(env or {}), "PYTHONPATH": str(code)}
    p = subprocess.run([sys.executable, __file__, "--child", *args], env=e, capture_output=True, text=True)
    if p.returncode:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def s3_lookup(code: Path, root: Path, key_index: int, old: bool) -> dict:
    """Upload what a lookup may read to moto, record the requests of one get_record."""
    import boto3
    import urllib.request
    from moto.moto_api import recorder
    from moto.server import ThreadedMotoServer

    from foundir_data import format as fmt

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=5123 + key_index % 100, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{5123 + key_index % 100}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
        s3.create_bucket(Bucket="scale")
        man = json.loads((root / fmt.MANIFEST_FILE).read_text())
        key = f"pair_{key_index:010d}"
        files = json.loads((root / fmt.KEYS_FILE).read_text())["files"]
        kf = next(f for f in files if f["first"] <= key <= f["last"])
        import pyarrow.parquet as pq
        t = pq.read_table(root / kf["path"])
        shard = t["shard"][t["key"].to_pylist().index(key)].as_py()
        up = [fmt.MANIFEST_FILE] + ([fmt.INDEX_FILE] if old else [fmt.KEYS_FILE, kf["path"], fmt.index_part(shard)])
        for rel in up:
            s3.upload_file(str(root / rel), "scale", rel)
        log = Path(root.parent / "moto_requests.jsonl")
        recorder._location = str(log)
        for verb in ("reset-recording", "start-recording"):
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/recorder/{verb}", method="POST")).read()
        out = run_child(code, "lookup", "s3://scale", key, env=env)
        gets, nbytes = 0, 0
        for line in log.read_text().splitlines():
            e = json.loads(line)
            if e["method"] not in ("GET", "HEAD") or "/scale/" not in e["url"]:
                continue
            rel = e["url"].split("?")[0].split("/scale/", 1)[1]
            if rel == fmt.MANIFEST_FILE:
                continue  # read before the lookup (Store.open warm-up) and by the lookup's own store
            gets += 1
            if e["method"] == "HEAD":
                continue
            rng = {k.lower(): v for k, v in e["headers"].items()}.get("range")
            if rng:
                a, b = rng.split("=")[1].split("-")
                nbytes += int(b) - int(a) + 1
            else:
                nbytes += (root / rel).stat().st_size
        out.update(gets=gets, get_bytes=nbytes)
        return out
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        what = sys.argv[2]
        res = (child_startup(sys.argv[3]) if what == "startup" else child_first(sys.argv[3]) if what == "first"
               else child_lookup(sys.argv[3], sys.argv[4]))
        print(json.dumps(res))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 15_000_000, 30_000_000])
    ap.add_argument("--per-shard", type=int, default=1000, help="rows per shard (default 1000: 15,000 shards at 15M)")
    ap.add_argument("--before", help="checkout of the code before (e.g. /work/main)")
    ap.add_argument("--before-max", type=int, default=15_000_000, help="largest size measured with --before")
    ap.add_argument("--work", required=True, help="scratch folder (one skeleton at a time; deleted)")
    ap.add_argument("--out", help="append the results as JSON lines here")
    ap.add_argument("--keep", action="store_true", help="keep the skeletons")
    ap.add_argument("--folder", help="instead: load_dataset(streaming=True) to its first example on this real "
                                     "packed folder, after (and before, through a version-2 view)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    if a.folder:
        n = json.loads((Path(a.folder) / "manifest.json").read_text())["num_samples"]
        for name, code, where in [("after", HERE, Path(a.folder))] + (
                [("before", Path(a.before), folder_view_v2(Path(a.folder), work / "view-v2"))] if a.before else []):
            r = run_child(code, "first", str(where))
            print(f"{n:,} index rows, {name:<6} load_dataset(streaming=True) to the first example: "
                  f"{r.get('cpu_s', float('nan')):.2f} CPU-s, {r.get('rss_growth_mb', float('nan')):.0f} MB {r.get('error', '')}",
                  flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps({"rows": n, "code": name, "first_example": r}) + "\n")
        return 0
    for n in a.rows:
        root = work / f"skeleton-{n}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t0 = time.perf_counter()
        info = write_skeleton(root, n, a.per_shard)
        print(f"{n:,} rows, {info['shards']:,} shards: written in {time.perf_counter() - t0:.0f} s; index "
              f"{info['index_bytes'] / 1e6:.0f} MB, parts {info['parts_bytes'] / 1e6:.0f} MB, key lookup "
              f"{info['keys_bytes'] / 1e6:.0f} MB, manifest {info['manifest_bytes'] / 1e6:.1f} MB", flush=True)
        codes = [("after", HERE)] + ([("before", Path(a.before))] if a.before and n <= a.before_max else [])
        for name, code in codes:
            res = {"rows": n, "code": name, **info,
                   "startup": run_child(code, "startup", str(root)),
                   "lookup": s3_lookup(code, root, n // 3, old=name == "before")}
            su, lk = res["startup"], res["lookup"]
            read = su.get("index_bytes_read", 0)
            print(f"  {name:<6} start-up {su.get('cpu_s', float('nan')):6.2f} CPU-s {su.get('rss_growth_mb', float('nan')):7.0f} MB "
                  f"index read {read / 1e6:8.2f} MB ({read / info['index_bytes']:.2%} of the index) | get_record on S3 "
                  f"{lk.get('cpu_s', float('nan')):6.2f} CPU-s {lk.get('rss_growth_mb', float('nan')):6.0f} MB "
                  f"{lk.get('gets', 0)} requests {lk.get('get_bytes', 0) / 1e6:.2f} MB {su.get('error', '')}{lk.get('error', '')}",
                  flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(res) + "\n")
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
