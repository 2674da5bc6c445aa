import datetime
import warnings

from mmengine import DefaultScope


def register_all_modules(init_default_scope=True):
    """Import every module that registers into the ``mmdccnext`` registries.

    Args:
        init_default_scope (bool): also make ``mmdccnext`` the default scope (unless one
            named ``mmdccnext`` is current already), as mmdet/mmseg/mmpretrain do.
    """
    import mmdccnext.engine  # noqa: F401,F403
    import mmdccnext.models  # noqa: F401,F403
    import mmdccnext.ops  # noqa: F401,F403

    if not init_default_scope:
        return
    current = DefaultScope.get_current_instance()
    if current is None or not DefaultScope.check_instance_created('mmdccnext'):
        DefaultScope.get_instance('mmdccnext', scope_name='mmdccnext')
    elif current.scope_name != 'mmdccnext':
        warnings.warn(f'The current default scope "{current.scope_name}" is not '
                      '"mmdccnext"; a new one is created and made current.')
        name = f'mmdccnext-{datetime.datetime.now()}'
        DefaultScope.get_instance(name, scope_name='mmdccnext')
