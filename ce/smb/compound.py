"""Requests that share one round trip. Over a WAN every request waited for costs a round trip, so the requests on
one open file that ce makes together -- open, query, close; set, query; rename, close -- go out as one SMB2 related
compound ([MS-SMB2] 3.2.4.1.4: the server runs them in order, each on the file the first opened), and independent
compounds are sent before the first is received (``Batch``).

A step is a (request, receive) pair as smbprotocol's ``Open`` methods return them with ``send=False``; a request
built before the file is open carries the related-compound file id, which the server replaces with the one its
create made. ``Outcomes`` keeps every step's result or failure: a server fails the requests after a failed one
(Samba and Windows do), and each response is received either way, so none is left outstanding.
"""
from __future__ import annotations

import logging
from typing import Callable

from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.open import (Open, SMB2CloseRequest, SMB2CreateRequest, SMB2QueryInfoRequest, SMB2QueryInfoResponse,
                              SMB2SetInfoRequest, SMB2SetInfoResponse)

from .protocol import unpack

log = logging.getLogger("ce.smb")

Step = tuple[object, Callable]


class Outcomes(list):
    """Each step's result, or the SMBResponseException it failed with."""

    def failure(self) -> SMBResponseException | None:
        return next((outcome for outcome in self if isinstance(outcome, SMBResponseException)), None)

    def raise_failure(self) -> "Outcomes":
        if (failure := self.failure()) is not None:
            raise failure
        return self

    def succeeded(self, index: int) -> bool:
        return not isinstance(self[index], SMBResponseException)


class Compound:
    """One related compound on ``handle``, sent when made; ``outcomes()`` receives its responses. A compound that
    opens the file and closes it, and whose close failed after its create succeeded, closes the file."""

    def __init__(self, handle: Open, steps: list[Step]):
        tree = handle.tree_connect
        self._handle, self._steps = handle, steps
        self._sent = handle.connection.send_compound([request for request, _ in steps], tree.session.session_id,
                                                     tree.tree_connect_id, related=len(steps) > 1)

    def outcomes(self) -> Outcomes:
        found = Outcomes()
        for (_, receive), request in zip(self._steps, self._sent):
            try:
                found.append(receive(request))
            except SMBResponseException as exc:
                found.append(exc)
        opens = isinstance(self._steps[0][0], SMB2CreateRequest)
        closes = isinstance(self._steps[-1][0], SMB2CloseRequest)
        if opens and closes and found.succeeded(0) and not found.succeeded(-1):
            close_open_file(self._handle)
        return found


def close_open_file(handle: Open) -> None:
    """Close ``handle`` by its file id (smbprotocol's ``close`` does nothing once a close of it was answered, even
    with a failure)."""
    request, receive = handle.close(send=False)
    tree = handle.tree_connect
    try:
        receive(handle.connection.send(request, tree.session.session_id, tree.tree_connect_id))
    except (SMBException, OSError, ValueError) as exc:
        log.debug("ignoring an error while closing %s: %s", handle.file_name, type(exc).__name__)


def query_info(handle: Open, info_class) -> Step:
    info = info_class()
    request = SMB2QueryInfoRequest()
    request["info_type"] = info.INFO_TYPE
    request["file_info_class"] = info.INFO_CLASS
    request["file_id"] = handle.file_id
    request["output_buffer_length"] = len(info)
    receive_info = lambda sent: unpack(SMB2QueryInfoResponse, handle.connection.receive(sent)).parse_buffer(info_class)
    return request, receive_info


def set_info(handle: Open, info) -> Step:
    request = SMB2SetInfoRequest()
    request["info_type"] = info.INFO_TYPE
    request["file_info_class"] = info.INFO_CLASS
    request["file_id"] = handle.file_id
    request["buffer"] = info
    return request, lambda sent: unpack(SMB2SetInfoResponse, handle.connection.receive(sent))
