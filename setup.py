"""Packaging for Beam workers (`--setup_file ./setup.py` on Dataflow) and editable installs."""

import setuptools

setuptools.setup(
    name="tagkit",
    version="0.1.0",
    packages=setuptools.find_packages(include=["pipelines*", "tagtrain*", "manifests*"]),
    package_data={"manifests": ["splits/**/*"]},
    py_modules=["beam_runner"],
    install_requires=[],  # workers get requirements.txt through --requirements_file or the image
)
