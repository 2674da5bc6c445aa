from .dccnext import DCCNeXt, DCCNeXtBlock

__all__ = ['DCCNeXt', 'DCCNeXtBlock']
