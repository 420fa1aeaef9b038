"""Static networks built from an Arch, and the baseline zoo."""

from nas.models.static import Network, build_model
from nas.models.zoo import list_zoo, resize, zoo_arch

__all__ = ["Network", "build_model", "list_zoo", "resize", "zoo_arch"]
