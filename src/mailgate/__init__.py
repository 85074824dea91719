"""mailgate: the core both daemons (``saslimap`` and ``mail-filter``) are built on.

It owns what the two share, so that neither imports the other: configuration
loading and validators (:mod:`mailgate.config`), the error root
(:mod:`mailgate.errors`), logging (:mod:`mailgate.logs`), systemd readiness and
socket activation (:mod:`mailgate.sdnotify`), Unix-socket binding
(:mod:`mailgate.sockets`), the process lifecycle (:mod:`mailgate.lifecycle`),
the ``serve`` command's common steps (:mod:`mailgate.command`), the metrics HTTP
endpoint (:mod:`mailgate.metrics_http`) and the one imapclient wrapper
(:mod:`mailgate.imap`, with :mod:`mailgate.mailbox` for folder work).

Importing this package imports none of its modules: a daemon loads only what
it uses (the filter never loads imapclient unless it learns).
"""
