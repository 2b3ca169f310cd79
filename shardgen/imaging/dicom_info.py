"""The audit attributes of a DICOM sample (the ``dicom`` object of its ``.json``).

Kept apart from :mod:`shardgen.imaging.dicom` (which imports pydicom when it decodes) so that the
converted result a worker sends back names a small, dependency-free class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DicomInfo"]


@dataclass(frozen=True)
class DicomInfo:
    """The audit attributes of a converted DICOM image (the sample's ``.json`` ``dicom``).

    Attributes:
        photometric: Photometric Interpretation (``MONOCHROME1``, ``MONOCHROME2``, ``RGB``, ...).
        bits_stored: Bits Stored.
        window: ``"window"`` (center/width used), ``"voi_lut"`` (first VOI LUT used) or ``"none"``.
        center, width: the window used (only for ``"window"``).
        function: its VOI LUT Function when the file gives one (``LINEAR``, ``SIGMOID``, ...).
        modality: Modality (``CR``, ``DX``, ``CT``, ...), when present.
        view_position: View Position (``PA``, ``AP``, ``LL``, ...), when present.
        transfer_syntax: the Transfer Syntax UID the pixels were stored with.
    """

    photometric: str
    bits_stored: int
    window: str = "none"
    center: float | None = None
    width: float | None = None
    function: str | None = None
    modality: str | None = None
    view_position: str | None = None
    transfer_syntax: str = ""

    def to_json(self) -> dict[str, Any]:
        """The ``dicom`` object: fields in the documented order, absent ones left out."""
        win: Any = self.window
        if self.window == "window":
            win = {"center": self.center, "width": self.width}
            if self.function:
                win["function"] = self.function
        out: dict[str, Any] = {"photometric": self.photometric, "bits_stored": self.bits_stored, "window": win}
        if self.modality:
            out["modality"] = self.modality
        if self.view_position:
            out["view_position"] = self.view_position
        out["transfer_syntax"] = self.transfer_syntax
        return out
