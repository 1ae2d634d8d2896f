"""One error base (FoundIRError) and one command runner: one line, the invoked program's
prefix, the exit-code table of foundir_data.errors."""

from __future__ import annotations

import pytest

from foundir_data import errors
from foundir_data.errors import FoundIRError


def test_every_error_class_derives_from_the_base_and_keeps_its_builtin():
    from foundir_data.format import FormatError
    from foundir_data.errors import ChecksumError, ShardError, TruncatedShardError
    from foundir_data.remote.store import NoManifestError
    from foundir_data.taxonomy import UnknownDegradationError
    from shard_tools.pack.plan import PackError
    from shard_tools.ingest.layouts import IngestError
    from shard_tools.pack.merge import MergeError
    from shard_tools.pack.probe import BadImage
    from shard_tools.publish.push import PushError, PushIOError
    from shard_tools.tiles.tiler import TileError

    pairs = [(FormatError, ValueError), (ShardError, OSError), (ChecksumError, OSError),
             (TruncatedShardError, OSError), (NoManifestError, FileNotFoundError),
             (UnknownDegradationError, ValueError), (PackError, RuntimeError), (IngestError, ValueError),
             (MergeError, RuntimeError), (BadImage, ValueError), (PushError, RuntimeError),
             (TileError, RuntimeError)]
    for cls, builtin in pairs:
        assert issubclass(cls, FoundIRError) and issubclass(cls, builtin), cls
    assert errors.exit_code(ChecksumError("u", "r")) == 2 and errors.exit_code(ShardError("u", "r")) == 3
    assert errors.exit_code(PushIOError("x")) == 3 and errors.exit_code(NoManifestError("x")) == 2
    assert errors.exit_code(OSError(28, "No space left on device")) == 3
    assert errors.exit_code(FileNotFoundError(2, "No such file", "x")) == 2


@pytest.mark.parametrize("prog", ["foundir", "shard_tools"])
def test_one_prefix_one_line_per_program(tmp_path, capsys, prog):
    if prog == "foundir":
        from foundir_model.cli import main
    else:
        from shard_tools.cli import main
    assert main(["merge", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog} merge: error: ") and "not a pack output folder" in err[0]
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith(f"{prog} verify: error: ")
    assert main(["no-such-command"]) == 2
    assert capsys.readouterr().err.startswith(f"{prog}: error: unknown command")
