"""The SMB location a step reads from or writes to, as it arrives in a job: folder, account, transport options.

The service sends ``{"Location": "\\\\host\\share\\folder", "credentialId": "..."}``; the connector resolves the
credential id and hands ce the account itself under ``credentials``. The password is a ``SecretStr``: it prints as
``**********`` in reprs, logs, plans and result documents, and is unwrapped only when the session signs in.

A port the policy in force does not allow (``ce.smb.ports``: over the server, the bootstrap's ``smb_ports``, 445 by
default) is refused when the params are validated, naming the field that chose it: ``port``, or ``Location`` for
``smb://host:port/...``; a location without either uses 445, which must then be allowed too.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING, ContextManager

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from ..errors import SmbError
from .ports import refusal as port_refusal
from .location import Credentials, SmbLocation

if TYPE_CHECKING:
    from .share import SmbShare

# the shares a step keeps connected, by the step's ExitStack (ctx.held), then by location (the params' own object)
_STEP_SHARES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SmbCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, defer_build=True)  # built on first use
    username: str = Field(min_length=1, description="SMB user name (without the domain)")
    password: SecretStr = Field(description="never logged or reported")
    domain: str = Field("", description="Windows domain of the account; empty for a local account")

    def unwrap(self) -> Credentials:
        return Credentials(self.username, self.password.get_secret_value(), self.domain)


class StorageLocation(BaseModel):
    """A folder on an SMB share plus the account that may write to it."""
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, defer_build=True)  # built on first use
    Location: str = Field(description=r"\\host\share\folder, //host/share/folder or smb://host[:port]/share/folder")
    credentials: SmbCredentials
    credentialId: str | None = Field(None, description="the service's wallet id (informational; ce needs "
                                                       "the resolved credentials)")
    port: int | None = Field(None, ge=1, le=65535, validate_default=True,
                             description="SMB port (default 445, or the one in the URL); over the server only the "
                                         "ports its bootstrap allows (smb_ports, default 445)")
    encrypt: bool = Field(False, description="require SMB3 encryption even when the share does not")

    @field_validator("Location")
    @classmethod
    def _parseable(cls, value: str) -> str:
        try:
            location = SmbLocation.parse(value)
        except SmbError as exc:
            raise ValueError(exc.message) from None
        if location.port is not None and (refused := port_refusal(location.port)):
            raise ValueError(refused)
        return value

    @field_validator("port")
    @classmethod
    def _allowed_port(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            if "Location" not in info.data or SmbLocation.parse(info.data["Location"]).port is not None:
                return value            # the Location was refused, or its own port was checked with it
        if refused := port_refusal(value):
            raise ValueError(refused)
        return value

    @property
    def location(self) -> SmbLocation:
        return SmbLocation.parse(self.Location)

    def share(self) -> SmbShare:
        """The share folder, not yet connected: ``with target.share() as share: ...`` signs in and out."""
        from .share import SmbShare
        return SmbShare(self.location, self.credentials.unwrap(), port=self.port, encrypt=self.encrypt)

    def step_share(self, held: contextlib.ExitStack | None) -> ContextManager[SmbShare]:
        """``share()`` for a step: given the step's ``ctx.held`` it connects once and stays connected until the
        step ends, so the step's plan and apply share one connection and sign-in (over a WAN, seven round trips:
        TCP, negotiate, two session setups, tree connect, credits and folder, sign-out);
        ``with target.step_share(ctx.held) as share: ...`` leaves it open. Without ``held``, ``share()``."""
        if held is None:
            return self.share()
        shares = _STEP_SHARES.setdefault(held, {})
        if id(self) not in shares:           # the location is kept with its share: its id is not reused meanwhile
            shares[id(self)] = (self, held.enter_context(self.share()))
        return contextlib.nullcontext(shares[id(self)][1])

    def describe(self, name: str | None = None) -> str:
        where = str(self.location) + (f"\\{name}" if name else "")
        port = self.port or self.location.port
        return where + (f" (port {port})" if port else "")
