# ce first-boot action: grow the Windows volume into the space ce added at the end of the disk (upgradePvs's
# outputSizeMb). Windows resizes its own NTFS while running; the partition table (MBR or GPT, whose backup header
# Windows moves to the new end of the disk) is updated by the same call. Static text; the one parameter is the
# number of MiB ce added, for the log.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
Write-Output ("ce added " + [int]$p.added_mib + " MiB at the end of the disk")
Update-HostStorageCache
$letter = $env:SystemDrive.TrimEnd(':')
$supported = Get-PartitionSupportedSize -DriveLetter $letter
$current = (Get-Partition -DriveLetter $letter).Size
if ($supported.SizeMax -le $current) { Write-Output "volume $letter already uses all the space ($current bytes)"; exit 0 }
Resize-Partition -DriveLetter $letter -Size $supported.SizeMax
Write-Output ("volume " + $letter + " grown from " + $current + " to " + $supported.SizeMax + " bytes")
exit 0
