"""Self-contained HTML result pages: sortable tables, a degradation filter, and per-image
side-by-side / slider comparisons.

Shared by ``shard_tools preview --html`` (pairs of a packed folder) and ``foundir-eval --out``
(``index.html`` beside the report; ``foundir_model/eval/page.py``), so it lives in the bottom
layer that both use (``docs/ARCHITECTURE.md``). A page is one HTML file with its CSS and
script inline and images as relative paths next to it: the folder can be copied, zipped or
opened from disk with no network.

Images are written by :func:`save_view` as PNG (lossless: a restoration comparison must not
add JPEG artefacts of its own), scaled down to ``max_side`` when larger.
"""

from __future__ import annotations

import html
import io
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image

from foundir_data.output.atomic import write_atomic

__all__ = ["esc", "slug", "save_view", "table", "filter_bar", "compare_card", "page", "write_page"]


def esc(text: object) -> str:
    """HTML-escaped ``str(text)`` (quotes too: safe inside attributes)."""
    return html.escape(str(text), quote=True)


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (method names become folder names)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s or "method"


def save_view(rgb: np.ndarray, path: str | os.PathLike, max_side: int = 512) -> Path:
    """Write an ``HxWx3`` uint8 image as a PNG for a page, scaled down (area filter, aspect
    kept) so its long side is at most ``max_side``; written to a temporary name and renamed."""
    p = Path(path)
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if max_side > 0 and max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BOX)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    write_atomic(p, buf.getvalue(), fsync=False)
    return p


def _cell(c: object, tag: str = "td") -> str:
    if isinstance(c, tuple):
        text, key = c
    else:
        text, key = c, c
    if key is None or (isinstance(key, float) and not np.isfinite(key)):
        key = ""
    text = "-" if text is None else (f"{text:.4g}" if isinstance(text, float) else text)
    return f'<{tag} data-sort="{esc(key)}">{esc(text)}</{tag}>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, table_id: str, sortable: bool = True,
          row_attrs: Iterable[Mapping[str, str]] | None = None, caption: str = "") -> str:
    """An HTML table; with ``sortable`` a click on a header sorts by that column (numbers
    numerically, again to reverse). A cell is its text (None shows ``-``), or ``(text, sort
    key)``. ``row_attrs`` (e.g. ``{"data-degradation": "Blur"}``) go on
    each ``<tr>``, which is what :func:`filter_bar` filters on."""
    attrs = list(row_attrs) if row_attrs is not None else None
    out = [f'<div class="scroll"><table id="{esc(table_id)}" class="{"sortable" if sortable else "plain"}">']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f'<th scope="col">{esc(h)}</th>' for h in headers) + "</tr></thead><tbody>")
    for i, row in enumerate(rows):
        a = "".join(f' {esc(k)}="{esc(v)}"' for k, v in (attrs[i] if attrs else {}).items())
        out.append(f"<tr{a}>" + "".join(_cell(c) for c in row) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def filter_bar(values: Sequence[str], label: str = "degradation") -> str:
    """A select that hides every element whose ``data-degradation`` differs from the choice."""
    opts = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    return (f'<div class="filter"><label>Show {esc(label)}: <select id="filter">'
            f'<option value="">all</option>{opts}</select></label> <span id="shown"></span></div>')


def compare_card(title: str, degradation: str, views: Sequence[tuple[str, str, str]],
                 meta: Mapping[str, object] | None = None, anchor: str = "") -> str:
    """One image's comparison: the views side by side, and a slider over two of them.

    Args:
        title: Heading (e.g. the image's relative path or key).
        degradation: Its type (filtered on).
        views: ``(label, relative image path, caption)`` per view, e.g. LQ, each method, GT.
        meta: Shown on hover over the title (key, sources, sizes, EXIF, ...).
        anchor: The card's id (per-image table rows link to it).
    """
    tip = "\n".join(f"{k}: {v}" for k, v in (meta or {}).items())
    views = [(label, quote(src), cap) for label, src, cap in views]  # '#', '?', spaces in file names
    figs = "".join(f'<figure><img src="{esc(src)}" alt="{esc(label)}" loading="lazy">'
                   f"<figcaption>{esc(label)}{(' ' + esc(cap)) if cap else ''}</figcaption></figure>"
                   for label, src, cap in views)
    opts = lambda sel: "".join(  # noqa: E731
        f'<option value="{esc(src)}"{" selected" if i == sel else ""}>{esc(label)}</option>'
        for i, (label, src, _) in enumerate(views))
    left, right = 0, 1  # LQ against the first method (or GT when there is none)
    slider = ""
    if len(views) >= 2:
        slider = (f'<div class="slider"><div class="pick">left <select class="left">{opts(left)}</select> '
                  f'right <select class="right">{opts(right)}</select></div>'
                  f'<div class="stage"><img class="under" src="{esc(views[right][1])}" alt="right">'
                  f'<img class="over" src="{esc(views[left][1])}" alt="left" style="clip-path: inset(0 50% 0 0)">'
                  f'</div><input type="range" min="0" max="100" value="50" aria-label="slider"></div>')
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return (f'<section class="card" data-degradation="{esc(degradation)}"{ident}>'
            f'<h3 title="{esc(tip)}">{esc(title)} <span class="deg">{esc(degradation)}</span></h3>'
            f'<div class="row">{figs}</div>{slider}</section>')


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#eee;position:sticky;top:0}
table.sortable th{cursor:pointer}
th[aria-sort=ascending]::after{content:" \\25B2"} th[aria-sort=descending]::after{content:" \\25BC"}
td:first-child,th:first-child{text-align:left}
.filter{margin:1em 0;position:sticky;top:0;background:#fafafa;padding:.3em 0;z-index:2}
.card{background:#fff;border:1px solid #ddd;margin:1em 0;padding:.5em 1em}
.card h3{margin:.2em 0;font-size:15px;cursor:help} .deg{color:#777;font-weight:normal}
.row{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0} figure img{width:220px;display:block;image-rendering:pixelated}
figcaption{font-size:12px;text-align:center}
.slider{margin-top:.5em} .stage{position:relative;display:inline-block}
.stage img{display:block;width:min(640px,90vw);image-rendering:pixelated}
.stage img.over{position:absolute;top:0;left:0}
.scroll{overflow-x:auto}
.slider input{display:block;width:min(640px,90vw)}
.hidden{display:none}
"""

_JS = """
function sortBy(th){
  const table=th.closest('table'), body=table.tBodies[0], idx=[...th.parentNode.children].indexOf(th);
  const asc=th.getAttribute('aria-sort')!=='ascending';
  for(const h of th.parentNode.children) h.removeAttribute('aria-sort');
  th.setAttribute('aria-sort', asc?'ascending':'descending');
  const key=r=>{const v=r.children[idx].dataset.sort; const n=parseFloat(v); return v!==''&&!isNaN(n)&&isFinite(v)?n:v;};
  const rows=[...body.rows];
  rows.sort((a,b)=>{const x=key(a),y=key(b); let c;
    if(typeof x==='number'&&typeof y==='number') c=x-y; else c=String(x).localeCompare(String(y));
    return asc?c:-c;});
  for(const r of rows) body.appendChild(r);
}
function applyFilter(){
  const sel=document.getElementById('filter'); if(!sel) return;
  let shown=0, total=0;
  for(const el of document.querySelectorAll('[data-degradation]')){
    const hide=sel.value!==''&&el.dataset.degradation!==sel.value;
    el.classList.toggle('hidden', hide);
    if(el.tagName==='TR'){total++; if(!hide) shown++;}
  }
  const s=document.getElementById('shown'); if(s) s.textContent=total?(shown+' of '+total+' rows'):'';
}
function setupSlider(sl){
  const over=sl.querySelector('img.over'), under=sl.querySelector('img.under'), r=sl.querySelector('input');
  const upd=()=>{over.style.clipPath='inset(0 '+(100-r.value)+'% 0 0)';};
  r.addEventListener('input', upd);
  sl.querySelector('select.left').addEventListener('change', e=>{over.src=e.target.value;});
  sl.querySelector('select.right').addEventListener('change', e=>{under.src=e.target.value;});
  upd();
}
document.addEventListener('DOMContentLoaded',()=>{
  for(const th of document.querySelectorAll('table.sortable th')) th.addEventListener('click',()=>sortBy(th));
  const sel=document.getElementById('filter'); if(sel){sel.addEventListener('change', applyFilter); applyFilter();}
  for(const sl of document.querySelectorAll('.slider')) setupSlider(sl);
});
"""


def page(title: str, body: Sequence[str]) -> str:
    """A complete HTML document: ``body`` fragments in order, CSS and script inline."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{esc(title)}</title>"
            f"<style>{_CSS}</style><script>{_JS}</script></head><body>\n<h1>{esc(title)}</h1>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_page(path: str | os.PathLike, title: str, body: Sequence[str]) -> Path:
    """Write :func:`page` to ``path`` atomically (temporary name, then rename)."""
    p = Path(path)
    write_atomic(p, page(title, body).encode("utf-8"), fsync=False)
    return p
