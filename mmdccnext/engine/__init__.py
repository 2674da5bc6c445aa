from .hooks import AtomicCheckpointHook, ClusterVisualizationHook
from .optimizers import LearningRateDecayOptimizerConstructor

__all__ = [
    'AtomicCheckpointHook', 'ClusterVisualizationHook', 'LearningRateDecayOptimizerConstructor'
]
