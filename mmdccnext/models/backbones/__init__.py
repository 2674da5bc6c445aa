from .dccnext import DCCNeXt, DCCNeXtBlock
from .inference import optimize_for_inference

__all__ = ['DCCNeXt', 'DCCNeXtBlock', 'optimize_for_inference']
