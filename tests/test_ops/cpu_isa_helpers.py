"""Which ISAs of the C++ kernels this machine can run, for parametrising the op tests.

Every compiled ISA ('avx512', 'avx2', 'generic') is a test parameter; one this CPU cannot
run is skipped with the extension's own reason, which names the missing CPU feature.
"""
import contextlib
import importlib

import pytest

ext_loader = importlib.import_module('mmdccnext.ops.cpu_impl')

#: every ISA the extension can be built with, best first
ISAS = ('avx512', 'avx2', 'generic')


def isa_skip_reason(isa):
    """``None`` if this machine runs the kernels of ``isa``, else why not."""
    ext = ext_loader.load_ext()
    if ext is None:
        return f'the C++ extension mmdccnext._ext is not built ({ext_loader.ext_error()})'
    if isa not in ext.compiled_isas():
        return f'the {isa} kernels are not compiled in this build (x86-64 and GCC only)'
    if isa in ext.supported_isas():
        return None
    try:  # the extension's refusal names the missing CPU features
        ext.set_isa(isa)
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    ext.reset_isa()
    raise AssertionError(f'set_isa({isa!r}) accepted an ISA missing from supported_isas()')


def isa_param(value, isa):
    """``pytest.param(value)``, skipped (with the reason) where ``isa`` cannot run."""
    reason = isa_skip_reason(isa)
    return pytest.param(
        value, id=value, marks=pytest.mark.skipif(reason is not None, reason=reason or ''))


@contextlib.contextmanager
def forced_isa(isa):
    """Run the C++ kernels of ``isa``; afterwards the default choice again."""
    ext = ext_loader.load_ext()
    ext.set_isa(isa)
    try:
        yield
    finally:
        ext.reset_isa()
