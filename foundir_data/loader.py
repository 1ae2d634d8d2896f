"""``foundir_data.loader``, kept for code written for foundir 0.1 and the dataset cards published with
it: StreamLoader now live in :mod:`foundir_data.streaming.loader`; import them from ``foundir_data``.

Importing this module warns (DeprecationWarning) and gives the same objects.
"""

import warnings

from foundir_data.streaming.loader import StreamLoader

__all__ = ["StreamLoader"]

warnings.warn("foundir_data.loader moved to foundir_data.streaming.loader; import StreamLoader from foundir_data",
              DeprecationWarning, stacklevel=2)
