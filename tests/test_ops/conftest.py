import pytest
from cpu_isa_helpers import ISAS, forced_isa, isa_param


@pytest.fixture(params=[isa_param(isa, isa) for isa in ISAS])
def cpu_isa(request):
    """Each ISA of the C++ kernels this CPU can run (the others are skipped with the missing
    CPU feature), forced for the duration of the test."""
    with forced_isa(request.param):
        yield request.param
