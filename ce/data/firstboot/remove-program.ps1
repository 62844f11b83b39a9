# ce first-boot action: uninstall one program of another hypervisor (ce already disabled its services offline).
# The JSON parameters name the Add/Remove Programs entry by its uninstall key; what to run comes from that entry in
# the machine's own registry: msiexec /x for an MSI product code, else the entry's QuietUninstallString. An entry
# without a silent way to remove it fails this (optional) action instead of waiting for a user. Static text.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
$view = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall'
if ($p.wow64 -eq $true) { $view = 'HKLM:\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall' }
$key = [string]$p.uninstall_key
$entryPath = Join-Path $view $key
if (-not (Test-Path -LiteralPath $entryPath)) { Write-Output "already removed: $key"; exit 0 }
$entry = Get-ItemProperty -LiteralPath $entryPath
$isMsi = ($entry.WindowsInstaller -eq 1) -or ([string]$entry.UninstallString -match '(?i)msiexec')
if ($isMsi -and $key -match '^\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}$') {
    $proc = Start-Process -FilePath 'msiexec.exe' -ArgumentList @('/x', $key, '/qn', '/norestart', 'REBOOT=ReallySuppress') -Wait -PassThru
    exit $proc.ExitCode
}
$command = [string]$entry.QuietUninstallString
if (-not $command) { Write-Output "$key has no product code and no QuietUninstallString: remove it by hand"; exit 2 }
if ($command -match '^\s*"([^"]+)"\s*(.*)$') {
    $exe = $Matches[1]; $rest = $Matches[2]
} elseif ($command -match '^\s*(\S+?\.exe)\s*(.*)$') {
    $exe = $Matches[1]; $rest = $Matches[2]
} else {
    Write-Output "cannot read the uninstall command of $key"; exit 2
}
if ($rest) {
    $proc = Start-Process -FilePath $exe -ArgumentList $rest -Wait -PassThru
} else {
    $proc = Start-Process -FilePath $exe -Wait -PassThru
}
exit $proc.ExitCode
