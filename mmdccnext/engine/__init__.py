from .hooks import AtomicCheckpointHook
from .optimizers import LearningRateDecayOptimizerConstructor

__all__ = ['AtomicCheckpointHook', 'LearningRateDecayOptimizerConstructor']
