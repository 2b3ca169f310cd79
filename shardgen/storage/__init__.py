"""Where builds and sources live: local folders and any fsspec URL (``s3://``, ``http(s)://``, ...).

- :mod:`.filesystems`: open a finished build (:func:`open_build`, :class:`Build`) from a folder,
  a ``manifest.json`` or a URL; filesystems, ``--storage_options``, the S3 endpoint and the
  timeouts of every remote request;
- :mod:`.transport`: what a storage failure reads as (one line naming the redacted URL);
- :mod:`.location`: :class:`~.location.Location`, a folder or URL with the options that open
  it, picklable for the build's workers;
- :mod:`.io`: one GET per read and one atomic PUT per object; :mod:`.get`: many reads on S3
  through presigned URLs;
- :mod:`.scrub`: credentials kept out of messages.

Below the sources, the build and the commands; it imports only the format and the shared
helpers. The names below are the package's public API (the loaders use it too).
"""

from .filesystems import (DEFAULT_TIMEOUT_S, S3FS_RETRIES, Build, check_timeout,
                          filesystem, is_url, open_build, parse_storage_options, read_dataset_json, s3_endpoint,
                          split_url, storage_options_for, timeout_options)
from .protocols import HTTP_PROTOCOLS, S3_PROTOCOLS, Capabilities, capabilities
from .transport import storage_error

__all__ = ["Build", "open_build", "split_url", "is_url", "filesystem", "parse_storage_options",
           "storage_options_for", "s3_endpoint", "S3_PROTOCOLS", "HTTP_PROTOCOLS", "DEFAULT_TIMEOUT_S",
           "S3FS_RETRIES", "timeout_options", "check_timeout", "read_dataset_json", "storage_error", "Capabilities",
           "capabilities"]
