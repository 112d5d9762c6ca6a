"""Installs the backshift package and its two commands."""

import atexit
import os
import re
import shutil
import tempfile

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
# Build files (build/, backshift.egg-info/) go to a scratch directory removed
# at exit, so that `pip install .` leaves the checkout as it was.
SCRATCH = tempfile.mkdtemp(prefix="backshift-build-")
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
with open(os.path.join(HERE, "backshift", "__init__.py"), encoding="utf-8") as handle:
    VERSION = re.search(r'__version__ = "([^"]+)"', handle.read()).group(1)

setup(
    name="backshift",
    version=VERSION,
    description="Deduplicating, xz-compressing backups chosen with find -print0, "
                "restored through tar",
    long_description=open(os.path.join(HERE, "README"), encoding="utf-8").read(),
    long_description_content_type="text/plain",
    license="GPL-3.0-or-later",
    packages=["backshift"],
    python_requires=">=3.9",
    install_requires=[],
    entry_points={"console_scripts": ["backshift = backshift.cli:entry_point",
                                      "randomize = backshift.randomize:entry_point"]},
    # The manual page, where man finds it under the installation prefix.
    data_files=[("share/man/man1", ["backshift.1"])],
    options={"build": {"build_base": os.path.join(SCRATCH, "build")},
             "egg_info": {"egg_base": SCRATCH}},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
        "Operating System :: POSIX",
        "Topic :: System :: Archiving :: Backup",
    ],
)
