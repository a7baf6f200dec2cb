"""hwrnn: what software and hardware share: configs, number formats, quantizer integer math,
lookup-table contents, the layer checkpoint format and the latency formula."""
__version__ = "0.1.0"

from .cell_state import CellState
from .config import ConfigError, Folding, LayerConfig
from .checkpoint import CheckpointError, QuantLayer, load_layer

__all__ = ["CellState", "ConfigError", "Folding", "LayerConfig", "CheckpointError", "QuantLayer", "load_layer"]
