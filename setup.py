"""Build and install mmdccnext, with its optional C++ CPU extension ``mmdccnext._ext``.

Set ``MMDCCNEXT_WITH_EXT=0`` to skip the extension: the package then runs on its
pure-PyTorch paths (``mmdccnext.ops`` warns once).
"""
import glob
import os
import os.path as osp
from setuptools import find_packages, setup


def get_version():
    scope = {}
    with open(osp.join('mmdccnext', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def get_extensions():
    """The optional C++ CPU extension ``mmdccnext._ext`` (DCConv kernels).

    Portable flags only: the hot kernels carry ``target_clones("avx512f", "avx2", "default")``
    and the loader picks the clone the CPU supports, so a wheel runs on any x86-64.
    ``-ffp-contract=off`` keeps multiplies and adds separately rounded, as in the PyTorch
    path (the two paths then compute bit-identical distances). ``MMDCCNEXT_WITH_EXT=0``
    skips the extension.
    """
    if os.getenv('MMDCCNEXT_WITH_EXT', '1') == '0':
        return [], {}
    sources = sorted(glob.glob(osp.join('mmdccnext', 'ops', 'csrc', '*.cpp')))
    if not sources:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    extra_compile_args = ['-O3', '-fopenmp', '-std=c++20', '-ffp-contract=off', '-Wno-psabi']
    ext = CppExtension(
        name='mmdccnext._ext',
        sources=sources,
        extra_compile_args={'cxx': extra_compile_args},
        extra_link_args=['-fopenmp'])
    return [ext], {'build_ext': BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = get_extensions()

setup(
    name='mmdccnext',
    version=get_version(),
    packages=find_packages(exclude=('configs', 'tools', 'tests')),
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False)
