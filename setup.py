"""Build and install mmdccnext, with its optional C++ CPU extension ``mmdccnext._ext``.

Set ``MMDCCNEXT_WITH_EXT=0`` to skip the extension: the package then runs on its
pure-PyTorch paths (``mmdccnext.ops`` warns once).
"""
import glob
import os
import os.path as osp
import shutil
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# What OpenMMLab's `mim` reads from an installed package's `<package>/.mim/` (as mmdet's and
# mmpretrain's wheels carry it): `mim download` the model index, `mim train/test` configs and
# tools. mmdccnext.apis.zoo reads the same copy when there is no source checkout.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def get_version():
    scope = {}
    with open(osp.join('mmdccnext', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def get_extensions():
    """The optional C++ CPU extension ``mmdccnext._ext`` (DCConv kernels).

    Portable flags only: the kernels are compiled once per ISA in the same translation unit
    (``#pragma GCC target``: AVX-512, AVX2 + FMA, and the baseline), and the extension picks
    the copy by the CPU's features at run time, so a wheel runs on any x86-64 (see
    ``mmdccnext/ops/csrc/common/dcconv_common.h``). Never add ``-march`` / ``-mavx*`` here:
    the baseline copy and every std / torch inline function would then be compiled for that
    ISA too. ``-ffp-contract=off`` keeps multiplies and adds separately rounded, as in the
    PyTorch path (the two paths then compute bit-identical distances); only the marked
    screening code of the clustering re-enables contraction. ``MMDCCNEXT_WITH_EXT=0`` skips
    the extension.
    """
    if os.getenv('MMDCCNEXT_WITH_EXT', '1') == '0':
        return [], {}
    csrc = osp.join('mmdccnext', 'ops', 'csrc')
    sources = sorted(glob.glob(osp.join(csrc, '**', '*.cpp'), recursive=True))
    if not sources:
        return [], {}
    # headers: rebuild when they change, and shipped in the sdist (setuptools adds depends)
    headers = sorted(glob.glob(osp.join(csrc, '**', '*.h'), recursive=True))
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    extra_compile_args = ['-O3', '-fopenmp', '-std=c++20', '-ffp-contract=off', '-Wno-psabi']
    ext = CppExtension(
        name='mmdccnext._ext',
        sources=sources,
        depends=headers,
        extra_compile_args={'cxx': extra_compile_args},
        extra_link_args=['-fopenmp'])
    return [ext], {'build_ext': BuildExtension.with_options(use_ninja=True)}


class BuildPyWithMim(build_py):
    """``build_py`` that also copies ``MIM_FILES`` into ``mmdccnext/.mim`` of the build.

    Copied into the build directory only (wheel, sdist-built wheel, ``pip install .``), so
    the source tree never holds copies that could go stale. An editable install needs none:
    the zoo reads the checkout; ``mim`` cannot locate editable (PEP 660) installs at all.
    """

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        repo = osp.dirname(osp.abspath(__file__))
        mim_dir = osp.join(self.build_lib, 'mmdccnext', '.mim')
        for name in MIM_FILES:
            source, target = osp.join(repo, name), osp.join(mim_dir, name)
            if osp.isdir(target):
                shutil.rmtree(target)
            if osp.isdir(source):
                shutil.copytree(source, target,
                                ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            elif osp.isfile(source):
                os.makedirs(mim_dir, exist_ok=True)
                shutil.copyfile(source, target)


ext_modules, cmdclass = get_extensions()
cmdclass['build_py'] = BuildPyWithMim

setup(
    name='mmdccnext',
    version=get_version(),
    packages=find_packages(exclude=('configs', 'tools', 'tests')),
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False)
