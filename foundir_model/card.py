"""The model card (``README.md`` of a run or a Hub model repo), filled from a checkpoint.

Template: ``cards/model_card.md`` (``string.Template`` placeholders). The YAML front matter is
built with huggingface_hub's ``ModelCardData`` (``library_name``, ``pipeline_tag``, tags, the
training dataset and a ``model-index`` with the evaluation's average PSNR/SSIM), so the Hub's
card parser reads it back. The body holds the network and diffusion configs, the training
data and sampler schedule (the curriculum's phases as stored in the checkpoint's data state)
and the Table 1-style evaluation from a ``foundir-eval`` JSON report.

Example::

    from foundir_model.card import write_model_card
    write_model_card("runs/foundir/last.pt", "runs/foundir/README.md", eval_report="eval/report.json")
"""

from __future__ import annotations

import argparse
import json
import os
import string
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from foundir_data import taxonomy
from foundir_model import checkpoint as ckpt
from foundir_model.checkpoint import read_any
from foundir_model.config import TrainConfig, from_dict

#: What each named schedule does (foundir_data.sampling.schedules; paper section 4.2, Table 3(a)).
SCHEDULE_TEXT = {
    "incremental": "the paper's incremental learning (section 4.2, Algorithm 1): n steps on the isolated "
                   "types, which join the task pool one after another, then 2n steps in which every batch "
                   "combines an isolated and a coupled mini-batch",
    "incremental-reversed": "Table 3(a)'s D_c -> D_i: the coupled types first, then combined batches",
    "mix": "Mix-Train (Table 3(a)): uniform sampling over all pairs",
    "combine": "Combine-Train (Table 3(a), DiffUIR): every batch holds an equal share of every type",
    "sequence": "Sequence-Train (Table 3(a)): one degradation type after another",
    "release": "the release's two stages (its train.sh): n steps uniform over the isolated pairs, then "
               "3n steps uniform over all pairs",
}
LICENSE_TEXT = ("The code and these weights are released under Apache-2.0 by the foundir project. "
                "The training images keep the terms of their source; the FoundIR release is "
                "distributed by its authors through a request form (https://www.foundir.net).")


def _template() -> str:
    return resources.files("cards").joinpath("model_card.md").read_text(encoding="utf-8")


def _read_state(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(checkpoint, Mapping):
        return dict(checkpoint)

    return read_any(checkpoint)


def _read_report(report: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if report is None or isinstance(report, Mapping):
        return dict(report) if report is not None else None
    p = Path(report)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a readable foundir-eval JSON report ({e})") from None
    if not isinstance(data, dict) or "types" not in data or "average" not in data:
        raise ValueError(f"{p}: not a foundir-eval JSON report (needs 'types' and 'average'); "
                         "write one with foundir-eval --json PATH")
    return data


def _num(v: Any, digits: int) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def eval_table(report: Mapping[str, Any]) -> str:
    """The report's per-type PSNR/SSIM as a markdown table, paper row beside ours."""
    types = report.get("types", {})
    cols = [t.name for t in taxonomy.TYPES if t.name in types] + sorted(set(types) - set(taxonomy.NAMES))
    shorts = {t.name: t.short for t in taxonomy.TYPES}
    avg = report.get("average", {})
    head = "| | " + " | ".join(shorts.get(c, c) for c in cols) + " | Average |"
    rule = "|---|" + "---|" * (len(cols) + 1)
    rows = [
        ("PSNR", "psnr", 2), ("SSIM", "ssim", 4),
    ]
    lines = [head, rule]
    for label, key, d in rows:
        lines.append(f"| ours {label} | " + " | ".join(_num(types[c].get(key), d) for c in cols)
                     + f" | {_num(avg.get(key), d)} |")
    for label, key, d in rows:
        lines.append(f"| paper {label} | " + " | ".join(_num(types[c].get(f"paper_{key}"), d) for c in cols)
                     + f" | {_num(avg.get(f'paper_{key}'), d)} |")
    lines.append("| pairs | " + " | ".join(str(types[c].get("count", 0)) for c in cols)
                 + f" | {avg.get('count', 0)} |")
    return "\n".join(lines)


def schedule_table(schedule: Mapping[str, Any] | None) -> str:
    """The curriculum's phases (from the checkpoint's stream state) as a markdown table."""
    if not schedule or not schedule.get("phases"):
        return ""
    lines = ["| phase | steps | mode | types |", "|---|---|---|---|"]
    for p in schedule["phases"]:
        names = [n for n, w in (p.get("weights") or {}).items() if w]
        shown = ", ".join(names) if len(names) <= 7 else f"{len(names)} types"
        lines.append(f"| {p.get('name')} | {p.get('steps')} | {p.get('mode', 'shuffle')} | {shown} |")
    return "\n".join(lines)


def front_matter(state: Mapping[str, Any], report: Mapping[str, Any] | None, model_name: str,
                 dataset_id: str | None, license: str) -> str:
    """The card's YAML, written by huggingface_hub's ModelCardData (model-index included)."""
    from huggingface_hub import (  # start-up time: huggingface_hub's card classes (~0.4 s) only when a card is written
        EvalResult,
        ModelCardData,
    )

    results = []
    avg = (report or {}).get("average", {})
    for metric, key in (("psnr", "psnr"), ("ssim", "ssim")):
        if avg.get(key) is not None:
            results.append(EvalResult(
                task_type="image-to-image", task_name="Image restoration", dataset_type="foundir",
                dataset_name=(report or {}).get("location") or "FoundIR test", dataset_split="test",
                metric_type=metric, metric_value=round(float(avg[key]), 4),
                metric_name=f"{metric.upper()} (mean over {avg.get('types', 0)} degradation types)"))
    data = ModelCardData(
        license=license, library_name="foundir", pipeline_tag="image-to-image",
        tags=["image-restoration", "diffusion", "residual-diffusion", "foundir", "all-in-one"],
        datasets=[dataset_id] if dataset_id else None, model_name=model_name,
        eval_results=results or None)
    return data.to_yaml() + "\n"


def render_model_card(checkpoint: str | os.PathLike | Mapping[str, Any], *,
                      eval_report: str | os.PathLike | Mapping[str, Any] | None = None,
                      model_name: str = "foundir-generalist", dataset_id: str | None = None,
                      license: str = "apache-2.0", checkpoint_name: str | None = None) -> str:
    """The filled model card text.

    Args:
        checkpoint: A ``.pt`` checkpoint or ``.safetensors`` export path, or a loaded state.
        eval_report: A ``foundir-eval`` JSON report (path or dict); None: no evaluation yet.
        model_name: Name in the title and the model-index.
        dataset_id: Hub id of the training dataset (``datasets:`` in the YAML), if public.
        license: SPDX id for the YAML ``license`` field.
        checkpoint_name: File name shown in the usage snippets (default: the path's name).

    Raises:
        ValueError / foundir_model.checkpoint.CheckpointError: an unreadable checkpoint or report.
    """
    state = _read_state(checkpoint)
    report = _read_report(eval_report)

    unet, diff = ckpt.configs(state, str(checkpoint_name or "checkpoint"))
    train_d = {k: v for k, v in (state.get("train") or {}).items() if k in TrainConfig.__dataclass_fields__}
    train = from_dict(TrainConfig, train_d, "checkpoint: train")
    n_params = sum(v.numel() for k, v in (state.get("ema") or state.get("model") or {}).items()
                   if hasattr(v, "numel"))
    schedule = (state.get("data") or {}).get("schedule")
    sched_text = SCHEDULE_TEXT.get(train.schedule, f"custom curriculum ({train.schedule})")
    phases = schedule_table(schedule)
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint_name = checkpoint_name or Path(checkpoint).name
    if report:
        eval_text = (f"Metrics: {report.get('convention', '')}. Evaluated on `{report.get('location', '')}`.\n\n"
                     + eval_table(report))
    else:
        eval_text = "Not evaluated yet: run `foundir-eval ... --json report.json` and regenerate this card."
    fields = {
        "front_matter": front_matter(state, report, model_name, dataset_id, license),
        "model_name": model_name, "checkpoint_name": checkpoint_name or "model.safetensors",
        "step": int(state.get("step", 0)), "preset": train.preset,
        "num_params": f"{n_params / 1e6:.2f}M" if n_params else "unknown",
        "unet_dim": unet.dim, "unet_mults": "x".join(map(str, unet.dim_mults)),
        "unet_blocks": unet.blocks_per_level, "attn_heads": unet.attn_heads, "attn_dim_head": unet.attn_dim_head,
        "timesteps": diff.timesteps, "gamma_T": diff.gamma_T, "delta_start": diff.delta_start,
        "delta_end": "derived from gamma_T" if diff.delta_end is None else diff.delta_end,
        "beta_start": diff.beta_start, "beta_end": diff.beta_end, "sampling_steps": diff.sampling_steps,
        "start_noise": diff.start_noise,
        "data": train.data or "(batches passed in by the caller)", "split": train.split,
        "data_config": train.config, "layout": train.layout, "schedule": train.schedule,
        "schedule_text": sched_text,
        "schedule_phases": ("Curriculum as trained (from the checkpoint's stream state):\n\n" + phases
                            if phases else "The checkpoint holds no stream state (batches were passed in)."),
        "steps_per_phase": train.steps_per_phase if train.steps_per_phase is not None else "one pass over the data",
        "steps": train.steps, "batch_size": train.batch_size, "crop": train.crop, "grad_accum": train.grad_accum,
        "lr": train.lr, "lr_schedule": "constant" if train.lr_halve_step is None else
        f"halved at step {int(train.lr_halve_step * train.step_scale)}",
        "adam_beta1": train.adam_beta1, "adam_beta2": train.adam_beta2, "grad_clip": train.grad_clip,
        "ema_decay": f"{train.ema_decay} (every {train.ema_update_every} steps, copied up to step "
                     f"{train.ema_update_after_step})", "seed": train.seed,
        "eval_text": eval_text, "license_text": LICENSE_TEXT,
        "maturity": ckpt.maturity_note(state, f"`{checkpoint_name or 'this checkpoint'}`") or "",
    }
    return string.Template(_template()).substitute(fields)


def write_model_card(checkpoint: str | os.PathLike | Mapping[str, Any], out: str | os.PathLike,
                     **kw: Any) -> Path:
    """Render the card (see :func:`render_model_card`) and write it to ``out``."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_model_card(checkpoint, **kw), encoding="utf-8")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m foundir_model.card CHECKPOINT --out README.md [--eval report.json]``."""
    ap = argparse.ArgumentParser(prog="python -m foundir_model.card", description="Write a model card from a checkpoint.")
    ap.add_argument("checkpoint")
    ap.add_argument("--out", default="README.md")
    ap.add_argument("--eval", dest="eval_report", help="foundir-eval JSON report")
    ap.add_argument("--name", default="foundir-generalist")
    ap.add_argument("--dataset-id", help="Hub id of the training dataset")
    a = ap.parse_args(argv)
    try:
        p = write_model_card(a.checkpoint, a.out, eval_report=a.eval_report, model_name=a.name, dataset_id=a.dataset_id)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
