"""foundir_model.eval: the paper's evaluation protocol on the FoundIR test split.

``items`` lists the test pairs, the predictions it looks up and the scoring pool; ``metrics``
computes PSNR/SSIM exactly as the paper's Table 1 did; ``paper`` holds that table as data and
writes Table 1-style reports; ``page`` the results page; ``evaluate`` is ``foundir-eval``
(docs/training.md, "Evaluate (Table 1)").

May import: ``foundir_model.restore`` (image files, and restoring the frames it scores).

Its commands also import: ``foundir_model.checkpoint``, ``foundir_model.flags``,
``foundir_model.memory`` and ``foundir_model.threads``.
"""
