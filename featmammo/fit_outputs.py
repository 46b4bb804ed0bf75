"""Former location of :mod:`featmammo.fit.outputs` (moved into the ``featmammo.fit`` package).

This module is an alias: ``import featmammo.fit_outputs`` gives the very module object
``featmammo.fit.outputs``, so imports and monkeypatching keep working.
"""

import sys

from .fit import outputs as _module

sys.modules[__name__] = _module
