"""``ce.registry.regfile``: a plan's or a result's registry changes as a regedit ``.reg`` file -- exact bytes for each
value type (escaping, wrapping, deletions, the default value, non-ASCII), what is listed as comments only, the atomic
write and its refusals; read back by independent readers: hivexregedit (Win::Hivex::Regedit's .reg parser) merging
the file into a real hive that regipy then reads, and Wine's ``reg import`` / ``reg export`` where Wine is installed."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from regipy.registry import RegistryHive

from ce.changes import ChangeOutcome, Plan, RegistryDeleteKey, RegistryDeleteValue, RegistrySet, Result
from ce.errors import RegFileUnwritable
from ce.registry import Hive, RegType, create_empty_hive, regfile

KEY = r"Citrix\VirtualDesktopAgent"


def setting(name: str, type: str, value, old: dict | None = None, reason: str = "", **where) -> RegistrySet:
    return RegistrySet(**{"hive": "SOFTWARE", "key": KEY, **where}, name=name, old=old,
                       new={"type": type, "value": value}, reason=reason)


def value_lines(change) -> list[str]:
    """The lines under the key line, without comments and the blank line that ends the block."""
    lines = regfile.render(Plan(step="prepare", changes=[change])).splitlines()
    start = lines.index(f"[HKEY_LOCAL_MACHINE\\SOFTWARE\\{KEY}]")
    return [line for line in lines[start + 1:] if line and not line.startswith(";")]


# ---------------------------------------------------------------- exact bytes

def test_the_file_is_utf16le_with_a_bom_and_crlf_as_regedit_writes_it():
    plan = Plan(step="prepare", changes=[setting("ListOfDDCs", "REG_SZ", "ddc2.corp.local",
                                                 old={"type": "REG_SZ", "value": "ddc1.corp.local"},
                                                 reason="the controllers the VDA registers with")])
    expected = ("Windows Registry Editor Version 5.00\r\n"
                "\r\n"
                "; ce prepare: 1 registry change, planned by a dry run, not applied.\r\n"
                "; Each value's old data and the reason for the change are in the comment above it.\r\n"
                "\r\n"
                "[HKEY_LOCAL_MACHINE\\SOFTWARE\\Citrix\\VirtualDesktopAgent]\r\n"
                "; was REG_SZ 'ddc1.corp.local' -- the controllers the VDA registers with\r\n"
                "\"ListOfDDCs\"=\"ddc2.corp.local\"\r\n"
                "\r\n")
    data = regfile.encode(regfile.render(plan))
    assert data[:10] == b"\xff\xfeW\x00i\x00n\x00d\x00"
    assert data == b"\xff\xfe" + expected.encode("utf-16-le")


@pytest.mark.parametrize("type,value,line", [
    ("REG_SZ", "plain", '"v"="plain"'),
    ("REG_SZ", "", '"v"=""'),
    ("REG_SZ", 'C:\\Program Files\\"Citrix"\\', '"v"="C:\\\\Program Files\\\\\\"Citrix\\"\\\\"'),
    ("REG_SZ", "Ünïcødé 日本語", '"v"="Ünïcødé 日本語"'),
    ("REG_SZ", "two\r\nlines", '"v"=hex(1):74,00,77,00,6f,00,0d,00,0a,00,6c,00,69,00,6e,00,65,00,73,00,00,00'),
    ("REG_DWORD", 10, '"v"=dword:0000000a'),
    ("REG_DWORD", 0xFFFFFFFF, '"v"=dword:ffffffff'),
    ("REG_DWORD_BIG_ENDIAN", 1, '"v"=hex(5):00,00,00,01'),
    ("REG_QWORD", 0x0102030405060708, '"v"=hex(b):08,07,06,05,04,03,02,01'),
    ("REG_EXPAND_SZ", "%A%", '"v"=hex(2):25,00,41,00,25,00,00,00'),
    ("REG_EXPAND_SZ", "é", '"v"=hex(2):e9,00,00,00'),
    ("REG_MULTI_SZ", ["a", "b"], '"v"=hex(7):61,00,00,00,62,00,00,00,00,00'),
    ("REG_MULTI_SZ", [], '"v"=hex(7):00,00'),
    ("REG_BINARY", "0102ff", '"v"=hex:01,02,ff'),
    ("REG_BINARY", "", '"v"=hex:'),
    ("REG_NONE", "", '"v"=hex(0):'),
    ("REG_LINK", "\\R", '"v"=hex(6):5c,00,52,00'),
    ("REG_RESOURCE_LIST", "01000000", '"v"=hex(8):01,00,00,00'),
    ("0x1f", "abcd", '"v"=hex(1f):ab,cd'),
])
def test_each_type_in_regedit_syntax(type, value, line):
    assert value_lines(setting("v", type, value)) == [line]


def test_names_are_escaped_and_the_default_value_is_at():
    assert value_lines(setting('a "b" \\c', "REG_DWORD", 1)) == ['"a \\"b\\" \\\\c"=dword:00000001']
    assert value_lines(setting("", "REG_SZ", "x")) == ['@="x"']
    assert value_lines(RegistryDeleteValue(hive="SOFTWARE", key=KEY, name="", old={"type": "REG_SZ",
                                                                                  "value": "x"})) == ["@=-"]


def test_hex_data_wraps_at_80_columns_as_regedit_wraps_it():
    lines = value_lines(setting("Bin", "REG_BINARY", bytes(range(60)).hex()))
    assert lines == [
        '"Bin"=hex:00,01,02,03,04,05,06,07,08,09,0a,0b,0c,0d,0e,0f,10,11,12,13,14,15,16,\\',
        "  17,18,19,1a,1b,1c,1d,1e,1f,20,21,22,23,24,25,26,27,28,29,2a,2b,2c,2d,2e,2f,\\",
        "  30,31,32,33,34,35,36,37,38,39,3a,3b"]
    assert [len(line) for line in lines] == [80, 78, 37]


def test_an_expandable_path_is_exported_byte_for_byte_as_windows_regedit_exports_it():
    assert value_lines(setting("Path", "REG_EXPAND_SZ", "%SystemRoot%\\system32")) == [
        '"Path"=hex(2):25,00,53,00,79,00,73,00,74,00,65,00,6d,00,52,00,6f,00,6f,00,74,\\',
        "  00,25,00,5c,00,73,00,79,00,73,00,74,00,65,00,6d,00,33,00,32,00,00,00"]


def test_a_wide_name_wraps_by_its_utf16_length():
    """🎉 is two UTF-16 units, as regedit counts: its first line holds one byte fewer than for a one-unit letter."""
    one, two = (value_lines(setting(name, "REG_BINARY", bytes(40).hex()))[0] for name in ("abc", "ab🎉"))
    assert (one.count(","), two.count(",")) == (23, 22)


def test_deletions_and_the_hives_on_a_running_windows():
    plan = Plan(step="convertToUefi", changes=[
        RegistryDeleteValue(hive="SYSTEM", key=r"ControlSet001\Services\pvsvm", name="Start",
                            old={"type": "REG_DWORD", "value": 0}, reason="the driver is replaced"),
        RegistryDeleteKey(hive="SYSTEM", key=r"ControlSet001\Services\old", reason="gone"),
        setting("x", "REG_DWORD", 1, hive="DEFAULT", key=r"Control Panel\Desktop"),
        setting("y", "REG_DWORD", 2, hive="SAM", key=r"SAM\Domains"),
        setting("z", "REG_DWORD", 3, hive="SECURITY", key="Policy"),
    ])
    assert regfile.render(plan).split("\n")[5:] == [
        "[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\pvsvm]",
        "; deletes it; was REG_DWORD 0 -- the driver is replaced",
        '"Start"=-',
        "",
        "; deletes the whole key and everything under it -- gone",
        "[-HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Services\\old]",
        "",
        "[HKEY_USERS\\.DEFAULT\\Control Panel\\Desktop]",
        "; was absent",
        '"x"=dword:00000001',
        "",
        "[HKEY_LOCAL_MACHINE\\SAM\\SAM\\Domains]",
        "; was absent",
        '"y"=dword:00000002',
        "",
        "[HKEY_LOCAL_MACHINE\\SECURITY\\Policy]",
        "; was absent",
        '"z"=dword:00000003',
        "",
        ""]


def test_values_of_one_key_share_its_block_in_the_plans_order():
    plan = Plan(step="prepare", changes=[setting("a", "REG_DWORD", 1), setting("b", "REG_DWORD", 2),
                                         setting("c", "REG_DWORD", 3, key="Other"), setting("d", "REG_DWORD", 4)])
    keys = [line for line in regfile.render(plan).splitlines() if line.startswith("[")]
    assert keys == [f"[HKEY_LOCAL_MACHINE\\SOFTWARE\\{KEY}]", "[HKEY_LOCAL_MACHINE\\SOFTWARE\\Other]",
                    f"[HKEY_LOCAL_MACHINE\\SOFTWARE\\{KEY}]"]


def test_hives_without_a_path_on_a_running_windows_are_comments_only():
    bcd = RegistrySet(hive="/EFI/Microsoft/Boot/BCD", filesystem="/dev/sda1",
                      key=r"Objects\{9dea862c}\Elements\16000060", name="Element", old=None,
                      new={"type": "REG_BINARY", "value": "01"}, reason="boot menu")
    user = setting("Wallpaper", "REG_SZ", "x.jpg", hive="NTUSER.DAT", key=r"Control Panel\Desktop")
    text = regfile.render(Plan(step="convertToUefi", changes=[bcd, user]))
    body = text.split("\n")[4:]
    assert all(line.startswith(";") for line in body if line), body
    assert "; NOT RE-APPLIABLE: this change is in the hive file /EFI/Microsoft/Boot/BCD on /dev/sda1" in text
    assert ';   "Element"=hex:01' in text and ';   "Wallpaper"="x.jpg"' in text
    assert "the hive NTUSER.DAT, which is not one of the machine's hives" in text


def test_a_comment_never_ends_in_a_backslash():
    text = regfile.render(Plan(step="prepare", changes=[setting("v", "REG_SZ", "new", reason="under C:\\")]))
    assert "; was absent -- under C:\\ ;" in text.splitlines()


def test_a_result_lists_only_what_was_applied_the_parts_included():
    applied, failed = setting("a", "REG_DWORD", 1), setting("b", "REG_DWORD", 2)
    later = RegistryDeleteKey(hive="SYSTEM", key="Gone")
    result = Result(step="prepareAndPublish", parts=[
        Result(step="prepare", outcomes=[ChangeOutcome(change=applied, status="applied"),
                                         ChangeOutcome(change=failed, status="failed")]),
        Result(step="publish", outcomes=[ChangeOutcome(change=later, status="applied")])])
    text = regfile.render(result)
    assert "; ce prepareAndPublish: 2 registry changes, applied by the run." in text
    assert '"a"=dword:00000001' in text and '"b"' not in text and "[-HKEY_LOCAL_MACHINE\\SYSTEM\\Gone]" in text


def test_nothing_to_change_is_said_in_the_file():
    assert regfile.render(Plan(step="export")) == ("Windows Registry Editor Version 5.00\n\n"
                                                   "; ce export: no registry changes (planned by a dry run, "
                                                   "not applied).\n\n")


# ---------------------------------------------------------------- the file

def test_the_file_replaces_an_old_one_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "changes.reg"
    target.write_text("old")
    regfile.write(regfile.check_writable(target), Plan(step="export"))
    assert target.read_bytes() == regfile.encode(regfile.render(Plan(step="export")))
    assert [p.name for p in tmp_path.iterdir()] == ["changes.reg"]


@pytest.mark.parametrize("where", ["missing/changes.reg", "a-file/changes.reg", "."])
def test_an_unwritable_path_is_refused(tmp_path, where):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(RegFileUnwritable):
        regfile.check_writable(tmp_path / where)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# ---------------------------------------------------------------- independent readers

READER_PLAN = [
    setting("Text", "REG_SZ", 'C:\\Program Files\\"Citrix" Ünïcødé', old={"type": "REG_SZ", "value": "old"}),
    setting("", "REG_SZ", "the default"),
    setting('Na"me\\x', "REG_DWORD", 0xDEADBEEF),
    setting("Big", "REG_QWORD", 0x0102030405060708),
    setting("Path", "REG_EXPAND_SZ", "%SystemRoot%\\system32\\日本"),
    setting("Controllers", "REG_MULTI_SZ", ["ddc1.corp.local", "ddc2.corp.local", "é"]),
    setting("Blob", "REG_BINARY", bytes(range(256)).hex()),
    setting("Odd", "0x1f", "abcd"),
    RegistryDeleteValue(hive="SOFTWARE", key=KEY, name="Stale", old={"type": "REG_DWORD", "value": 1}),
    RegistryDeleteKey(hive="SOFTWARE", key=r"Citrix\Gone"),
    RegistrySet(hive="/EFI/Microsoft/Boot/BCD", filesystem="/dev/sda1", key=KEY, name="NotHere", old=None,
                new={"type": "REG_DWORD", "value": 1}),
]
EXPECTED = {"Text": ("REG_SZ", 'C:\\Program Files\\"Citrix" Ünïcødé'), "": ("REG_SZ", "the default"),
            'Na"me\\x': ("REG_DWORD", 0xDEADBEEF), "Big": ("REG_QWORD", 0x0102030405060708),
            "Path": ("REG_EXPAND_SZ", "%SystemRoot%\\system32\\日本"),
            "Controllers": ("REG_MULTI_SZ", ["ddc1.corp.local", "ddc2.corp.local", "é"]),
            "Blob": ("REG_BINARY", bytes(range(256)))}


def test_hivexregedit_merges_the_file_into_a_hive_that_regipy_reads(tmp_path):
    """hivexregedit reads bytes in the local encoding (its manual: iconv from UTF-16LE first) and encodes quoted
    strings byte by byte, so the file goes through iconv to ISO-8859-1: the non-ASCII of quoted strings here is
    Latin-1, the rest is hex. It ends a key's block at a comment line (regedit and Wine do not), so the comments are
    taken out first; Wine's test below reads them. A value it got wrong, or a line it could not parse, fails."""
    hive = tmp_path / "SOFTWARE"
    create_empty_hive(hive)
    with Hive.open(hive, write=True) as h:
        h.set(KEY, "Stale", RegType.DWORD, 1)
        h.set(KEY, "Text", RegType.SZ, "old")
        h.set(r"Citrix\Gone\Sub", "x", RegType.DWORD, 1)
        h.commit(hive)
    reg = tmp_path / "changes.reg"
    regfile.write(reg, Plan(step="prepare", changes=READER_PLAN))
    latin1 = subprocess.run(["iconv", "-c", "-f", "UTF-16", "-t", "ISO-8859-1", str(reg)], capture_output=True)
    assert latin1.stdout.startswith(b"Windows Registry Editor Version 5.00\r\n")   # -c: the comments' 日本 go
    uncommented = re.sub(rb"(?m)^;.*\r\n", b"", latin1.stdout)     # it takes a comment for the end of a key
    merged = subprocess.run(["hivexregedit", "--merge", "--prefix", "HKEY_LOCAL_MACHINE\\SOFTWARE", str(hive)],
                            input=uncommented, capture_output=True)
    assert merged.returncode == 0, merged.stderr.decode("latin-1")
    regipy = RegistryHive(str(hive))
    values = {v.name: (v.value_type, v.value) for v in regipy.get_key("\\" + KEY).get_values(trim_values=False)}
    assert int(values.pop("Odd")[0]) == 0x1F      # regipy leaves a type it does not know undecoded: hivex reads it
    with Hive.open(hive) as h:
        assert h.get_raw(KEY, "Odd") == (0x1F, bytes.fromhex("abcd"))
    assert values == {"(default)" if name == "" else name: value for name, value in EXPECTED.items()}
    assert [k.name for k in regipy.get_key("\\Citrix").iter_subkeys()] == ["VirtualDesktopAgent"]


WINE = shutil.which("wine64") or ("/usr/lib/wine/wine64" if os.path.exists("/usr/lib/wine/wine64") else None)


@pytest.mark.skipif(WINE is None, reason="Wine (Debian's wine64) is not installed")
def test_wine_reg_imports_the_file_and_exports_the_same_lines(tmp_path):
    """Wine's reg.exe, a reimplementation of Windows' regedit parser and exporter, imports the whole file (comments
    between values, deletions, the comments-only BCD block); what it then exports of the key is entry for entry
    what ce wrote for the values it sets."""
    env = {**os.environ, "WINEPREFIX": str(tmp_path / "wine"), "WINEDEBUG": "-all"}
    wine = lambda *args: subprocess.run([WINE, *args], env=env, capture_output=True, timeout=300)  # noqa: E731
    assert wine("wineboot", "-i").returncode == 0
    assert wine("reg", "add", f"HKLM\\SOFTWARE\\{KEY}", "/v", "Stale", "/t", "REG_DWORD", "/d", "1").returncode == 0
    assert wine("reg", "add", "HKLM\\SOFTWARE\\Citrix\\Gone\\Sub", "/v", "x", "/d", "1").returncode == 0
    ours, sets, theirs = tmp_path / "ours.reg", tmp_path / "sets.reg", tmp_path / "theirs.reg"
    regfile.write(ours, Plan(step="prepare", changes=READER_PLAN))
    regfile.write(sets, Plan(step="prepare", changes=[c for c in READER_PLAN
                                                      if isinstance(c, RegistrySet) and not c.filesystem]))
    assert wine("reg", "import", windows(ours)).returncode == 0
    assert wine("reg", "export", f"HKLM\\SOFTWARE\\{KEY}", windows(theirs), "/y").returncode == 0
    assert wine("reg", "query", "HKLM\\SOFTWARE\\Citrix\\Gone").returncode != 0
    exported = theirs.read_bytes()
    assert exported.startswith(b"\xff\xfe") and "\r\n".encode("utf-16-le") in exported
    assert entries(exported.decode("utf-16")) == entries(sets.read_bytes().decode("utf-16"))


def windows(path: Path) -> str:
    return "Z:" + str(path).replace("/", "\\")


def entries(text: str) -> list[str]:
    """The key and value entries of a .reg file, each with its continuation lines as they are, sorted (Wine exports
    values by name); comments and blank lines left out."""
    found, current = [], ""
    for line in text.splitlines():
        if not current and (not line or line.startswith(";")):
            continue
        current += line + "\n"
        if not line.endswith("\\"):
            found.append(current)
            current = ""
    return sorted(found)


# ---------------------------------------------------------------- the command line

CE = Path(sys.executable).parent / "ce"


def ce(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CE), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def disk(tmp_path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(1 << 20))
    return path


def test_reg_diff_on_a_step_command_and_a_job_without_registry_changes(disk, tmp_path):
    """``ce hash`` needs no appliance and plans no registry change: the file says so, for a dry run and a run."""
    planned, applied = tmp_path / "planned.reg", tmp_path / "applied.reg"
    done = ce("hash", "--dry-run", str(disk), "--reg-diff", str(planned))
    assert done.returncode == 0, done.stderr
    assert planned.read_bytes() == regfile.encode(regfile.render(Plan(step="hash")))
    job = tmp_path / "hash.json"
    job.write_text(json.dumps({"type": "hash", "params": {"disk": str(disk)}}))
    done = ce("run", "--job", str(job), str(disk), "--reg-diff", str(applied), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == "hash"                     # stdout stays the JSON document
    assert applied.read_bytes().decode("utf-16").splitlines()[2] == \
        "; ce hash: no registry changes (applied by the run)."
    assert "reg diff: 0 registry changes written to" in done.stderr


@pytest.mark.parametrize("command", ["hash", "plan", "run"])
def test_an_unwritable_reg_diff_is_refused_before_the_step_runs(disk, tmp_path, command):
    job = tmp_path / "hash.json"
    job.write_text(json.dumps({"type": "hash", "params": {"disk": str(disk)}}))
    where = ["--job", str(job)] if command != "hash" else []
    done = ce(command, *where, str(disk), "--reg-diff", str(tmp_path / "missing" / "x.reg"), "--machine-readable")
    assert done.returncode == 1
    assert done.stderr.startswith("ce: error [reg_file_unwritable]: cannot write ") and "missing" in done.stderr
    assert done.stdout == "" and '"percent"' not in done.stderr          # no progress: the step never started
