"""Former location of :mod:`featmammo.fit.caveats` (moved into the ``featmammo.fit`` package).

This module is an alias: ``import featmammo.fit_caveats`` gives the very module object
``featmammo.fit.caveats``, so imports and monkeypatching keep working.
"""

import sys

from .fit import caveats as _module

sys.modules[__name__] = _module
