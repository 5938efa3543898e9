"""Falcon-H1 in numpy: config, checkpoint loader, tokenizer and the batched model.

from deepconf.backends.falcon_h1 import FalconH1Model, load_tokenizer
model = FalconH1Model.from_pretrained("path/to/checkpoint")
tok = load_tokenizer("path/to/checkpoint")
"""

from .config import FalconH1Config, load_config
from .model import FalconH1Cache, FalconH1Model
from .tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "FalconH1Cache",
    "FalconH1Config",
    "FalconH1Model",
    "Tokenizer",
    "load_config",
    "load_tokenizer",
]
