# ce first-boot action: install the Citrix Provisioning target device software staged by ce from its payload
# store. Static text; only the installer's file name comes from the JSON parameters.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
$installer = Join-Path (Split-Path -Parent $ParamsFile) (Join-Path '..\payloads' $p.installer)
if (-not (Test-Path -LiteralPath $installer)) { Write-Output "not found: $installer"; exit 2 }
if ($installer.ToLower().EndsWith('.msi')) {
    $proc = Start-Process -FilePath 'msiexec.exe' -ArgumentList @('/i', ('"' + $installer + '"'), '/qn', '/norestart', 'REBOOT=ReallySuppress') -Wait -PassThru
} else {
    $proc = Start-Process -FilePath $installer -ArgumentList '/s /v"/qn REBOOT=ReallySuppress"' -Wait -PassThru
}
exit $proc.ExitCode
