"""foundir_data.sampling: the seeded order of the training samples, as pure numpy.

``schedules`` are the curricula (which degradation types go into every batch, in what share:
the paper's incremental learning), ``counts`` the integer batch composition of a curriculum,
``plan`` the global order and its partition over ranks and DataLoader workers (from shard facts
alone at release scale), ``rng`` the one table of named seeded streams (docs/sampler.md). No
I/O and no torch: each function is tested for its invariants over many seeds and world sizes.

May import: ``foundir_data.taxonomy`` (and numpy).
"""
