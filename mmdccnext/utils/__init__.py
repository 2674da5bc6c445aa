from .checkpoint import load_checkpoint_file, mmengine_safe_globals, register_checkpoint_loaders
from .setup_env import register_all_modules
from .version_check import check_mmcv

__all__ = [
    'check_mmcv', 'load_checkpoint_file', 'mmengine_safe_globals',
    'register_all_modules', 'register_checkpoint_loaders'
]
