"""What a user does with a finished build, one command per module or folder: :mod:`.verify`,
:mod:`.diff`, :mod:`.info`, :mod:`.preview`, :mod:`.stylegan`, :mod:`.export`, :mod:`.upload`;
:mod:`.archive` holds the exports' local outputs (an atomic zip or folder) and the verified
samples they are filled from.

Each command reads a build through :func:`shardgen.storage.open_build` and the format; it
may use the build's lock rules (:mod:`shardgen.build.run.lock`), and only the CLI imports it.
"""
