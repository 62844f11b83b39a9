"""Files on the guest's mounted filesystems, by guest path (``Guest.win_path``'s result, or a path on another
filesystem mounted with ``Guest.on_filesystem``): the only way ce's other modules touch files in an image."""
from __future__ import annotations


class GuestFiles:
    """Mixed into ``Guest``: ``self.g`` is its libguestfs handle."""

    def is_file(self, path: str) -> bool:
        return self.g.is_file(path)

    def is_dir(self, path: str) -> bool:
        return self.g.is_dir(path)

    def path_exists(self, path: str) -> bool:
        return self.g.exists(path)

    def read_bytes(self, path: str) -> bytes:
        """The contents of a guest path (``read_file`` takes a Windows path)."""
        return self.g.read_file(path)

    def checksum(self, path: str, algorithm: str = "sha256") -> str:
        return self.g.checksum(algorithm, path)

    def download(self, path: str, local: str) -> None:
        self.g.download(path, str(local))

    def upload(self, local: str, path: str) -> None:
        self.g.upload(str(local), path)

    def move(self, source: str, target: str) -> None:
        self.g.mv(source, target)

    def remove(self, path: str, *, missing_ok: bool = False) -> None:
        (self.g.rm_f if missing_ok else self.g.rm)(path)

    def make_dirs(self, path: str) -> None:
        self.g.mkdir_p(path)

    def hard_link(self, target: str, link: str) -> None:
        self.g.ln(target, link)

    def copy(self, source: str, target: str) -> None:
        self.g.cp(source, target)

    def listdir(self, path: str) -> list[str]:
        return self.g.ls(path)

    def file_size(self, path: str) -> int:
        return self.g.filesize(path)

    def inode(self, path: str) -> tuple[int, int]:
        """(inode, link count) of ``path`` without following a symlink."""
        st = self.g.lstatns(path)
        return st["st_ino"], st["st_nlink"]

    def xattr(self, path: str, name: str) -> bytes:
        return self.g.lgetxattr(path, name)

    def sync_now(self) -> None:
        """Flush whatever the mount mode (sync() flushes a read-write mount only)."""
        self.g.sync()
