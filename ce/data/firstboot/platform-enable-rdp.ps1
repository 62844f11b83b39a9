# ce first-boot action: enable the inbound Remote Desktop firewall rules (group "Remote Desktop", named by its
# language-neutral resource string) when ce found none to enable offline. Takes no values; the parameter file is
# read for uniformity with the other actions. Static text.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
Enable-NetFirewallRule -Group '@FirewallAPI.dll,-28752'
exit 0
