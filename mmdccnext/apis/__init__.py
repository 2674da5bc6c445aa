from .data_check import DataNotFoundError, check_data_roots
from .download import ChecksumError, DownloadError, download_checkpoint, load_checkpoint_from_url
from .inference import config_file, get_config, init_model
from .model_index import register_model_index
from .publish import metafile_snippet, publish_checkpoint
from .runner import load_config, test_from_args, train_from_args
from .zoo import NoWeightsError, fetch_checkpoint, load_model_index

__all__ = [
    'ChecksumError', 'DataNotFoundError', 'DownloadError', 'NoWeightsError',
    'check_data_roots', 'config_file', 'download_checkpoint', 'fetch_checkpoint', 'get_config',
    'init_model', 'load_checkpoint_from_url', 'load_config', 'load_model_index',
    'metafile_snippet', 'publish_checkpoint', 'register_model_index', 'test_from_args',
    'train_from_args'
]
