"""Former location of :mod:`featmammo.fit.stores` (moved into the ``featmammo.fit`` package).

This module is an alias: ``import featmammo.fit_stores`` gives the very module object
``featmammo.fit.stores``, so imports and monkeypatching keep working.
"""

import sys

from .fit import stores as _module

sys.modules[__name__] = _module
