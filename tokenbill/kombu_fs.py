"""The embedded default's Celery broker: kombu's filesystem transport, with each message
written whole before a reader can see it.

kombu's own `_put` creates `<name>.msg` and then writes it; its reader lists the folder,
moves the file away and reads it without taking the writer's (advisory) lock, so a reader
that comes between the two reads an empty or partial file: "JSONDecodeError", and the
worker died (issue 17). Here the message is written under a name the reader ignores and
renamed into place (a rename within one folder is atomic on POSIX), so a reader sees either
no file or the whole message; with beat, the gateway and the console all sending, writers
are concurrent by design. A file that still does not parse (left by an older version) is
logged and dropped instead of killing the worker.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps

log = logging.getLogger(__name__)
SCHEME = "tbfilesystem"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = "{}_{}.{}.msg".format(int(round(monotonic() * 1000)), uuid.uuid4(), queue)
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")  # partition('.') never matches a queue
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())
            os.rename(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue):
        while True:
            try:
                return super()._get(queue)
            except json.JSONDecodeError as exc:  # only a file an older writer left half-written
                log.error("embedded broker: dropped an unreadable message in queue %s (%s)", queue, exc)


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(SCHEME, "tokenbill.kombu_fs:Transport")
