"""Integer-only deployment of a multiplication-free TargetNet: C code, bit-exact and measured.

Three layers, one source of truth:

* ``nas.codegen.intnet``: the integer network (``IntNet``), an explicit list of layers with
  fixed-point formats, integer weights and requantisation constants, lowered from a static
  ``nas.models.Network`` and formats calibrated on real images;
* ``nas.codegen.reference``: a Python integer reference that runs an ``IntNet`` on int64 tensors
  (the shift and adder convolutions through ``nas.ops.deploy``);
* ``nas.codegen.emit_c``: the C99 generator (``model.h``, ``model.c``, ``main.c``), whose output
  must equal the reference bit for bit; ``nas.codegen.check`` compiles it, runs it on test
  images and counts the operations it executes.

``nas.codegen.memory`` plans the activation arena (peak SRAM). The number formats, the BatchNorm
handling and the memory plan are described in docs/deploy.md.
"""

from nas.codegen.intnet import IntNet, build_intnet

__all__ = ["IntNet", "build_intnet"]
