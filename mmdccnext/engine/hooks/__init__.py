from .checkpoint_hook import AtomicCheckpointHook
from .cluster_visualization_hook import ClusterVisualizationHook

__all__ = ['AtomicCheckpointHook', 'ClusterVisualizationHook']
