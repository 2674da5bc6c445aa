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
    if os.getenv('MMDCCNEXT_WITH_EXT', '1') == '0':
        return [], {}
    sources = sorted(glob.glob(osp.join('mmdccnext', 'ops', 'csrc', '*.cpp')))
    if not sources:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    extra_compile_args = ['-O3', '-fopenmp', '-std=c++20']
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
