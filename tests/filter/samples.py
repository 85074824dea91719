"""Sample mail and archives the filter's tests build: one message with an attachment, one zip."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage


def attach(data: bytes, filename: str, ctype: str = "application/octet-stream") -> bytes:
    """A message with ``data`` attached as ``filename`` (base64, as clients send it)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.net", "b@example.com", "att"
    msg.set_content("see attached")
    maintype, subtype = ctype.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def zipped(name: str, data: bytes) -> bytes:
    """A zip (deflated) holding one member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buf.getvalue()
