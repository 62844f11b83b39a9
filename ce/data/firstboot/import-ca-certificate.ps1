# ce first-boot action: trust a CA certificate staged by ce (the PVS server's TLS CA for upgradePvs) in the
# machine's Trusted Root store. Static text; only the certificate's file name comes from the JSON parameters.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
$file = Join-Path (Split-Path -Parent $ParamsFile) (Join-Path '..\payloads' $p.certificate)
if (-not (Test-Path -LiteralPath $file)) { Write-Output "not found: $file"; exit 2 }
$imported = Import-Certificate -FilePath $file -CertStoreLocation 'Cert:\LocalMachine\Root'
Write-Output ("trusted " + $imported.Subject + " (" + $imported.Thumbprint + ")")
if ($imported.Thumbprint -ne $p.thumbprint) { Write-Output "thumbprint differs from the staged one"; exit 3 }
exit 0
