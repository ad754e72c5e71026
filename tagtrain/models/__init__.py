"""The model zoo. Importing this package registers every model with `tagtrain.models.registry`."""

from __future__ import annotations

# Each import registers that family's models.
from tagtrain.models import (  # noqa: F401
    cnnsa,
    crnn,
    fcn,
    hcnn,
    musicnn,
    musicnn_tf,
    patchout,
    pons,
    samplecnn,
    short_chunk,
    transformer,
    won2019,
)
