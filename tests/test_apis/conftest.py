# Fixtures of the model-zoo tests (shared with tests/test_tools/test_model_zoo_tools.py).
from zoo_helpers import published, torch_home, zoo_server  # noqa: F401
