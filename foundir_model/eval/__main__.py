"""``python -m foundir_model.eval``: the ``foundir-eval`` command (:mod:`foundir_model.eval.evaluate`)."""

from foundir_model.eval.evaluate import main

raise SystemExit(main())
