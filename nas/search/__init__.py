"""The two-stage architecture search: the pipeline, its executors, stage one and stage two.

Calling the package runs a search: ``nas.search(budget="0.02mJ", ...)`` is ``nas.api.search``
(``nas.search`` is both this package and the Python API's entry point; the module is made
callable, so either meaning works whether or not the package has been imported).
"""

import sys
import types


class _SearchPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from nas.api import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _SearchPackage
