"""The two-stage architecture search: the pipeline, its executors, stage one and stage two.

Calling the package runs a search: ``nas.search(budget="0.02mJ", ...)`` is ``nas.api.search``
(``nas.search`` is both this package and the Python API's entry point; the module is made
callable, so either meaning works whether or not the package has been imported).
"""

from nas._callable import callable_package

callable_package(__name__, "search")
