"""Initialise a patchout transformer (MAEST) from a user-supplied PaSST/MAEST checkpoint.

Every MAEST result starts from pretrained transformer weights (PaSST-S trained on
AudioSet, or DeiT-B/384 converted to PaSST's layout by PaSST's code); nothing is
downloaded: the user passes the file. The mapping, the container handling and the
position tables (resized as MAEST's `checkpoint_filter_fn` does) are those of
`import-weights --from maest|passt`: `tagtrain.pretrained.importers.maest`, whose
`load_passt_weights` this re-exports; only the tag head is left new.
"""

from __future__ import annotations

from tagtrain.pretrained.importers.common import WeightsImportError as CheckpointError
from tagtrain.pretrained.importers.maest import (
    _BLOCK_PARTS,
    _TOP,
    load_passt_weights,
    read_state_dict,
)

__all__ = ["_BLOCK_PARTS", "_TOP", "CheckpointError", "load_passt_weights", "read_state_dict"]
