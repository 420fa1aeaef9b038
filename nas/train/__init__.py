"""Training: the loop, ShiftAddAug / NetAug / direct training, augmentation, DDP.

Calling the package trains a network: ``nas.train(model="mbv2-tiny", ...)`` is ``nas.api.train``
(``nas.train`` is both this package and the Python API's entry point; the module is made
callable, so either meaning works whether or not the package has been imported).
"""

from nas._callable import callable_package

callable_package(__name__, "train")
