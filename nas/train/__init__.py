"""Training: the loop, ShiftAddAug / NetAug / direct training, augmentation, DDP.

Calling the package trains a network: ``nas.train(model="mbv2-tiny", ...)`` is ``nas.api.train``
(``nas.train`` is both this package and the Python API's entry point; the module is made
callable, so either meaning works whether or not the package has been imported).
"""

import sys
import types


class _TrainPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from nas.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
