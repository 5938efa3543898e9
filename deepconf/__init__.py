"""deepconf: DeepConf (Deep Think with Confidence) over any OpenAI-compatible server or the
bundled hybrid model."""

from deepconf.config import DeepConfConfig

__all__ = ["DeepConfConfig"]
__version__ = "0.1.0"
