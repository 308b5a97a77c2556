"""AWQ quantization: calibration, scale and clipping search, INT4 packing, checkpoint writer and loader."""

from awq_core.calibration import build_calibration
from awq_core.config import QuantConfig
from awq_core.quantizer import QuantReport, quantize

__all__ = ["QuantConfig", "QuantReport", "build_calibration", "quantize"]
