"""Fixtures for every test under tests/."""
from contextlib import contextmanager

import pytest
from mmengine.registry import DefaultScope


@contextmanager
def _default_scope_kept():
    instances = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(instances)


# MMEngine's current default scope is the newest ``DefaultScope`` instance in the process, and
# the libraries' entry points (``init_detector``, ``init_default_scope``, runners) create one
# without removing it: a test or a module's fixture building through them would otherwise
# change which registry a later test's ``MODELS.build(dict(type='DCConv'))`` searches (a
# KeyError from the mmdet registry), depending on the order the tests ran in.
@pytest.fixture(autouse=True, scope='module')
def default_scope_per_module():
    with _default_scope_kept():
        yield


@pytest.fixture(autouse=True)
def default_scope_per_test():
    with _default_scope_kept():
        yield
