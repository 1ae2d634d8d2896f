"""Comments and docs cite pages users have: ``docs/`` pages (or the paper), never a file outside
the repository; every ``docs/release.md, <section>`` citation names a section of that page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [p for pattern in ("foundir_data/**/*.py", "shard_tools/**/*.py", "foundir_model/**/*.py", "bench/*.py", "tests/*.py",
                           "cards/*.md", "docs/*.md", "README.md", ".ci/run", "setup.cfg")
         for p in ROOT.glob(pattern) if p.name != "test_citations.py"]


def test_no_citation_of_files_outside_the_repository():
    outside = ("REFERENCE.md", "../shared", "/work/shared")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in FILES
             for i, line in enumerate(p.read_text().splitlines(), 1) if any(o in line for o in outside)]
    assert found == []


def test_release_citations_name_existing_sections():
    sections = set(re.findall(r"^## (.+)$", (ROOT / "docs" / "release.md").read_text(), re.M))
    cited = set()
    for p in FILES:
        # 'docs/release.md, "Data"' in code; '[release.md](release.md), "Data"' in docs pages
        text = re.sub(r"\s+", " ", p.read_text())
        cited |= set(re.findall(r'release\.md\)?, "([^"]+)"', text))
    assert cited, "no citation of docs/release.md found"
    assert cited <= sections, cited - sections
