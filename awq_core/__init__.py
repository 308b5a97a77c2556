"""AWQ quantization: calibration, scale and clipping search, INT4 packing, checkpoint writer and loader.

The public names load on first use, so that `awq_core.compute` and `awq_core.config` (which the
CLI's history commands and the policy reader need) do not import torch's model stacks.
"""

from awq_release.lazy import lazy_names

_HOMES = {
    "QuantConfig": "awq_core.config",
    "QuantReport": "awq_core.quantizer",
    "build_calibration": "awq_core.calibration",
    "quantize": "awq_core.quantizer",
}
__all__ = list(_HOMES)

__getattr__ = lazy_names(__name__, _HOMES)
