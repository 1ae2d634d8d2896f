"""``foundir_data.access``, kept for code written for foundir 0.1 and the dataset cards published with
it: get_pair, get_record now live in :mod:`foundir_data.read.access`; import them from ``foundir_data``.

Importing this module warns (DeprecationWarning) and gives the same objects.
"""

import warnings

from foundir_data.read.access import get_pair, get_record

__all__ = ["get_pair", "get_record"]

warnings.warn("foundir_data.access moved to foundir_data.read.access; import get_pair, get_record from foundir_data",
              DeprecationWarning, stacklevel=2)
