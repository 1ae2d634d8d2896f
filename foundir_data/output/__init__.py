"""foundir_data.output: what the commands of all three packages write, and where they may.

``atomic`` writes a file whole or not at all (a temporary sibling, fsync, rename);
``output_dir`` is the one ownership rule of output folders (new, empty or marked ours, else
refused unless ``--overwrite``); ``html_report`` builds the self-contained result pages of
``preview --html`` and ``foundir-eval --out``.

May import: ``foundir_data.errors``.
"""
