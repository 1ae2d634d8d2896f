"""Named seeded random streams: every seeded draw of the data pipeline, in one table.

Each draw gets its own ``numpy.random.Generator`` seeded by a key ``[seed, epoch, STREAM,
...]`` (``numpy.random.default_rng`` over a list of integers, i.e. a ``SeedSequence``), so any
chunk, stream-epoch or crop can be recomputed on its own (resume, any world size or worker
count) and two purposes never share random numbers. The stream numbers are part of the
output: changing one changes every plan or crop drawn with it, so they never change (add new
ones at the end).

======================  =======  =================================================================
name                    value    key and purpose
======================  =======  =================================================================
``GROUP_SIZES``         1        ``[seed, epoch, 1, phase, chunk]``: per-step split of a batch
                                 between the groups of a phase (``counts.BatchCounts``)
``TYPE_TOTALS``         2        ``[seed, epoch, 2, phase, group]``: per-chunk type totals of a
                                 shuffle/single group (one hypergeometric walk per group)
``SHARE_COUNTS``        3        ``[seed, epoch, 3, phase, group, chunk]``: per-step type counts
                                 of a ``share`` group (systematic sampling offsets)
``STEP_LABELS``         4        ``[seed, epoch, 4, phase, group, chunk]``: which step gets which
                                 type in shuffle/single groups
``STREAM_ORDER``        5        ``[seed, epoch, 5, type id, stream group]``: shard-block shuffle
                                 of a type's stream-epochs (``plan.CurriculumPlan``)
``BATCH_SHUFFLE``       6        ``[seed, epoch, 6, chunk]``: order of the rows inside each global
                                 batch (so ranks do not get type-sorted slices)
``CROPS``               7        ``[seed, epoch, 7, step, slot]``: crop windows and flips of one
                                 pair (``stream.FoundIRStream``; world-size independent)
``NESTED_SUBSET``       0x5B5E7  ``[seed, 0x5B5E7]``: the row permutation of
                                 ``schedules.nested_subset`` (no epoch: subsets are fixed)
======================  =======  =================================================================

Outside this table: ``sample.make_sample`` draws its degradations from ``default_rng(seed)``
and ``shard_tools preview`` picks pairs with ``[seed, type index]``; model training seeds
torch generators (docs/training.md).
"""

from __future__ import annotations

import numpy as np

GROUP_SIZES = 1
TYPE_TOTALS = 2
SHARE_COUNTS = 3
STEP_LABELS = 4
STREAM_ORDER = 5
BATCH_SHUFFLE = 6
CROPS = 7
NESTED_SUBSET = 0x5B5E7

#: name -> stream number (the table above); numbers are unique.
STREAMS = {
    "GROUP_SIZES": GROUP_SIZES, "TYPE_TOTALS": TYPE_TOTALS, "SHARE_COUNTS": SHARE_COUNTS,
    "STEP_LABELS": STEP_LABELS, "STREAM_ORDER": STREAM_ORDER, "BATCH_SHUFFLE": BATCH_SHUFFLE,
    "CROPS": CROPS, "NESTED_SUBSET": NESTED_SUBSET,
}


def generator(*key: int) -> np.random.Generator:
    """The generator of one draw: ``default_rng`` over the integer key (see the table).

    Args:
        *key: ``seed, epoch, STREAM, ...`` (``seed, NESTED_SUBSET`` for subsets).
    """
    return np.random.default_rng([int(k) for k in key])
