"""foundir_data.streaming: the torch side of training: curriculum-ordered, aligned LQ/GT crops.

``stream`` is ``FoundIRStream`` (the sampling plan of this rank read through the pair reader,
resumable by ``state_dict``), ``loader`` is ``StreamLoader`` (a DataLoader whose resume state
counts the batches received, workers included), ``transforms`` the aligned crops and flips
(docs/streaming.md).

May import: ``foundir_data.errors``, ``foundir_data.format``, ``foundir_data.integrity``,
``foundir_data.taxonomy``, ``foundir_data.read``, ``foundir_data.remote`` and
``foundir_data.sampling``.
"""
