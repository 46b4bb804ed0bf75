"""Former location of :mod:`featmammo.fit.splits` (moved into the ``featmammo.fit`` package).

This module is an alias: ``import featmammo.fit_splits`` gives the very module object
``featmammo.fit.splits``, so imports and monkeypatching keep working.
"""

import sys

from .fit import splits as _module

sys.modules[__name__] = _module
