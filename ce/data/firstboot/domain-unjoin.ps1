# ce first-boot action: leave the Active Directory domain without contacting a domain controller
# (Win32_ComputerSystem.UnjoinDomainOrWorkgroup with options 0: the computer account in AD is left as it is),
# join the workgroup named in the JSON parameters, and clear ce's pending-unjoin marker. Static text.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
$marker = 'HKLM:\SOFTWARE\Citrix\ImagePortability'
$cs = Get-CimInstance -ClassName Win32_ComputerSystem
if ($cs.PartOfDomain) {
    $r = Invoke-CimMethod -InputObject $cs -MethodName UnjoinDomainOrWorkgroup -Arguments @{ FUnjoinOptions = [uint32]0 }
    if ($r.ReturnValue -ne 0) { Write-Output "UnjoinDomainOrWorkgroup returned $($r.ReturnValue)"; exit [int]$r.ReturnValue }
    $cs = Get-CimInstance -ClassName Win32_ComputerSystem
    $r = Invoke-CimMethod -InputObject $cs -MethodName JoinDomainOrWorkgroup -Arguments @{ Name = [string]$p.workgroup }
    if ($r.ReturnValue -ne 0) { Write-Output "JoinDomainOrWorkgroup returned $($r.ReturnValue)"; exit [int]$r.ReturnValue }
    Remove-ItemProperty -LiteralPath $marker -Name 'PendingDomainUnjoin' -ErrorAction SilentlyContinue
    exit 3010
}
Remove-ItemProperty -LiteralPath $marker -Name 'PendingDomainUnjoin' -ErrorAction SilentlyContinue
exit 0
