# ce first-boot action: add VDA components (Machine Identity Service, Citrix MCS IODriver) with the VDA installer
# of the installed version, staged by ce from its payload store. Static text; the installer file name and the
# component names arrive as JSON data and are passed as separate argv entries.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
$installer = Join-Path (Split-Path -Parent $ParamsFile) (Join-Path '..\payloads' $p.installer)
if (-not (Test-Path -LiteralPath $installer)) { Write-Output "not found: $installer"; exit 2 }
$argv = @('/quiet', '/noreboot', '/noresume', '/includeadditional', ($p.components -join ','))
& $installer @argv
exit $LASTEXITCODE
