from .dccnext import DCCNeXt, DCCNeXtBlock
from .inference import InferenceDCCNeXtBlock, optimize_for_inference

__all__ = ['DCCNeXt', 'DCCNeXtBlock', 'InferenceDCCNeXtBlock', 'optimize_for_inference']
