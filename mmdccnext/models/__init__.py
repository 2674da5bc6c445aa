from . import backbones, heads  # noqa: F401
from .backbones import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
