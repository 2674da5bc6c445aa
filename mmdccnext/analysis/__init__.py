from .complexity import (CONVENTIONS, build_model_from_cfg, dcconv_flop_handle, dcconv_flop_proxies,
                         dcconv_flops, format_count, get_complexity)

__all__ = [
    'CONVENTIONS', 'build_model_from_cfg', 'dcconv_flop_handle', 'dcconv_flop_proxies',
    'dcconv_flops', 'format_count', 'get_complexity'
]
