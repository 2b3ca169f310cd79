"""From one source file to the sample's image: decoding, DICOM, grayscale, fit, resize, PNG encoding.

- :mod:`.image`: decode -> grayscale -> fit -> resize -> PNG (``format/png.py``) for one file;
  Pillow's limit in the build's worker processes;
- :mod:`.dicom`: DICOM files (recognised by name or preamble, decoded by pydicom, imported
  lazily), the modality and VOI LUTs, MONOCHROME1; :mod:`.dicom_info` the audit attributes
  a sample records; :mod:`.codestream` a compressed frame's header checked before decoding;
- :mod:`.codecs`: the versions of the libraries the output bytes depend on.

Below the build and the sources; it imports only the format and the shared helpers.
"""
