"""The diagnostics bundle: what explains a failed job or an image that will not boot, gathered into one zip on an
SMB share without changing the disk. A mechanism package (steps/diagnostics.py is the step around it):

- ``image``: the image's sources (event logs, setup / servicing / driver logs, minidumps, ce's first-boot files and
  backups), selected and copied byte for byte through one read-only libguestfs launch;
- ``service``: ce's own side (the step store's documents and logs, the service journal);
- ``evtx``: the .evtx files decoded for the summary;
- ``bundle``: the ZIP64 writer with its caps and manifest; ``summary``: summary.txt;
- ``job``: plan (what would be collected and where it would go) and write.
"""
from .job import Diagnostics, describe, plan, write

__all__ = ["Diagnostics", "describe", "plan", "write"]
