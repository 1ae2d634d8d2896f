"""``python -m foundir_model.restore``: the ``foundir-restore`` command (:mod:`foundir_model.restore.infer`)."""

from foundir_model.restore.infer import main

raise SystemExit(main())
