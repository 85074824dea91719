"""``mail-filter portal``: the quarantine's web pages, for users and administrators.

Users log in with their mailbox password (checked by saslimap), see the
messages held for them, preview, release, delete, ask an administrator, and
allow senders; administrators search everything, release, delete in bulk,
answer release requests and see a chart.  Modules: :mod:`.app` (the
composition root), :mod:`.web` (pages and rules), :mod:`.sessions`,
:mod:`.auth` (the password check), :mod:`.preview` (a message as text),
:mod:`.redirects` (``next=``), :mod:`.chart` (the SVG).
"""
