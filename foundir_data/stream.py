"""``foundir_data.stream``, kept for code written for foundir 0.1 and the dataset cards published with
it: FoundIRStream now live in :mod:`foundir_data.streaming.stream`; import them from ``foundir_data``.

Importing this module warns (DeprecationWarning) and gives the same objects.
"""

import warnings

from foundir_data.streaming.stream import FoundIRStream

__all__ = ["FoundIRStream"]

warnings.warn("foundir_data.stream moved to foundir_data.streaming.stream; import FoundIRStream from foundir_data",
              DeprecationWarning, stacklevel=2)
