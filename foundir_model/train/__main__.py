"""``python -m foundir_model.train`` and ``torchrun -m foundir_model.train``: the ``foundir-train`` command (:mod:`foundir_model.train.loop`)."""

from foundir_model.train.loop import main

raise SystemExit(main())
