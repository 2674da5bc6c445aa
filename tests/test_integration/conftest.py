import pytest
from synthetic_helpers import make_tiny_datasets


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    return make_tiny_datasets(tmp_path_factory.mktemp('synthetic'))
