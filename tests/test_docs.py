"""The docs state the format's facts as ``foundir_data/format.py`` defines them, and every doc
page linked from the others exists."""

from __future__ import annotations

import re
from pathlib import Path

from foundir_data import format as fmt
from foundir_data import taxonomy

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = DOCS.parent / "README.md"


def test_format_doc_matches_format_py():
    text = (DOCS / "format.md").read_text()
    assert f"`{fmt.FORMAT_NAME}`, version {fmt.FORMAT_VERSION}" in text
    # Every index column, with its Arrow type and whether the JSON record carries it.
    documented = re.findall(r"^\| `([a-z_0-9]+)` \| (\w+) \| (yes|no) \|$", text, re.M)
    expected = [(f.name, str(f.type), "yes" if f.name in fmt.RECORD_FIELDS else "no") for f in fmt.INDEX_SCHEMA]
    assert documented == expected
    for member in fmt.MEMBERS:
        assert f"`<key>.{member}`" in text
    for name in (fmt.MANIFEST_FILE, fmt.INDEX_FILE, fmt.REJECTS_FILE, fmt.CARD_FILE):
        assert name in text
    manifest_fields = set(fmt.Manifest.__dataclass_fields__)
    assert manifest_fields <= set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    shard_fields = ", ".join(fmt.ShardInfo.__dataclass_fields__)
    assert f"{{{shard_fields}}}" in text
    example = fmt.shard_relpath(fmt.LAYOUT_FULL, "train", "Blur", 0)
    assert example.replace("train", "<split>").replace("Blur", "<degradation>").replace("000000", "<seq>") \
        .replace("full", "<layout>") in text
    for t in taxonomy.TYPES:
        assert f"| {t.index} | `{t.name}` | {t.short} | {t.cls} |" in text


def test_doc_links_resolve():
    pages = sorted(DOCS.glob("*.md")) + [README]
    assert {"format.md", "packing.md", "streaming.md", "sampler.md", "training.md"} <= {p.name for p in pages}
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


def _code_lines(text: str) -> list[str]:
    """Shell lines of the ``bash`` code blocks, with backslash continuations joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        out += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return out


def _parser(line: str):
    """The argparse parser of the command a doc line runs, or None for other commands."""
    import argparse
    import importlib

    from foundir_model.cli import COMMANDS as FOUNDIR_COMMANDS
    from shard_tools.cli import COMMANDS as SHARD_COMMANDS

    modules = {"foundir-train": "foundir_model.train.loop", "foundir_model.train": "foundir_model.train.loop",
               "foundir-eval": "foundir_model.eval.evaluate", "foundir-restore": "foundir_model.restore.infer",
               "foundir_model.card": None}
    m = re.search(r"(?:^|\s)(foundir-train|foundir-eval|foundir-restore|-m foundir_model\.train|"
                  r"shard_tools \w+|foundir [\w-]+)(?=\s|$)", line)
    if not m:
        return None
    cmd = m.group(1).replace("-m ", "")
    if cmd.startswith(("shard_tools ", "foundir ")):
        prog, sub = cmd.split()
        table = SHARD_COMMANDS if prog == "shard_tools" else FOUNDIR_COMMANDS
        if sub not in table:
            raise AssertionError(f"docs run an unknown sub-command: {line!r}")
        module = table[sub][0]
    else:
        module = modules[cmd]
    parser = argparse.ArgumentParser()
    importlib.import_module(module).configure(parser)
    return parser, line[m.end():]


def test_doc_commands_use_real_flags():
    for page in sorted(DOCS.glob("*.md")) + [README]:
        for line in _code_lines(page.read_text()):
            for part in re.split(r"&&|;|\|", line):
                found = _parser(part)
                if found is None:
                    continue
                parser, rest = found
                flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)
                unknown = [f for f in flags if f not in parser._option_string_actions]
                assert not unknown, f"{page.name}: {part.strip()!r} uses unknown flags {unknown}"


def test_doc_curriculum_yaml_parses():
    import yaml

    from foundir_data.sampling.schedules import Curriculum

    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / "sampler.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        cur = Curriculum.from_dict(yaml.safe_load(block))
        assert cur.total_steps > 0
