"""The SMB location a step reads from or writes to, as it arrives in a job: folder, account, transport options.

The service sends ``{"Location": "\\\\host\\share\\folder", "credentialId": "..."}``; the connector resolves the
credential id and hands ce the account itself under ``credentials``. The password is a ``SecretStr``: it prints as
``**********`` in reprs, logs, plans and result documents, and is unwrapped only when the session signs in.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..errors import SmbError
from .location import Credentials, SmbLocation
from .share import SmbShare


class SmbCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    username: str = Field(min_length=1, description="SMB user name (without the domain)")
    password: SecretStr = Field(description="never logged or reported")
    domain: str = Field("", description="Windows domain of the account; empty for a local account")

    def unwrap(self) -> Credentials:
        return Credentials(self.username, self.password.get_secret_value(), self.domain)


class StorageLocation(BaseModel):
    """A folder on an SMB share plus the account that may write to it."""
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    Location: str = Field(description=r"\\host\share\folder, //host/share/folder or smb://host[:port]/share/folder")
    credentials: SmbCredentials
    credentialId: str | None = Field(None, description="the service's wallet id (informational; ce needs "
                                                       "the resolved credentials)")
    port: int | None = Field(None, ge=1, le=65535, description="SMB port (default 445, or the one in the URL)")
    encrypt: bool = Field(False, description="require SMB3 encryption even when the share does not")

    @field_validator("Location")
    @classmethod
    def _parseable(cls, value: str) -> str:
        try:
            SmbLocation.parse(value)
        except SmbError as exc:
            raise ValueError(exc.message) from None
        return value

    @property
    def location(self) -> SmbLocation:
        return SmbLocation.parse(self.Location)

    def share(self) -> SmbShare:
        """The share folder, not yet connected: ``with target.share() as share: ...`` signs in and out."""
        return SmbShare(self.location, self.credentials.unwrap(), port=self.port, encrypt=self.encrypt)

    def describe(self, name: str | None = None) -> str:
        where = str(self.location) + (f"\\{name}" if name else "")
        port = self.port or self.location.port
        return where + (f" (port {port})" if port else "")
