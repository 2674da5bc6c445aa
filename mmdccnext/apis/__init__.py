from .data_check import DataNotFoundError, check_data_roots
from .runner import load_config, test_from_args, train_from_args

__all__ = [
    'DataNotFoundError', 'check_data_roots', 'load_config', 'test_from_args',
    'train_from_args'
]
