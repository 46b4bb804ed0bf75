"""Former location of :mod:`featmammo.fit.predict` (moved into the ``featmammo.fit`` package).

This module is an alias: ``import featmammo.predict`` gives the very module object
``featmammo.fit.predict``, so imports and monkeypatching keep working.
"""

import sys

from .fit import predict as _module

sys.modules[__name__] = _module
