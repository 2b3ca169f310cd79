"""Where a build's images come from: SRC read into typed records, never written to.

:mod:`.items` holds the records (:class:`~.items.Item` per image, :class:`~.items.Skip` per
input not used) and :mod:`.columns` their compact columnar tables; :mod:`.folder` finds
them under a local folder by its layout, :mod:`.url` under an fsspec URL with the same rules,
:mod:`.index` in a ``--index`` CSV, and :mod:`.splitlists` applies ``--split_lists``.

Sources read through :mod:`shardgen.storage` and :mod:`shardgen.imaging` (to sniff a file's
kind); the build (:mod:`shardgen.build`) is their only user.
"""
