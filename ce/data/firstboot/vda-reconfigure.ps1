# ce first-boot action: XenDesktopVdaSetup.exe /reconfigure with validated options.
# Static text. The options arrive as a JSON list of separate arguments (e.g. "/portnumber", "8080"), each passed
# to the installer as one argv entry by the call operator: no value is ever parsed as PowerShell or cmd code.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
$setup = Join-Path $env:ProgramFiles 'Citrix\XenDesktopVdaSetup\XenDesktopVdaSetup.exe'
if (-not (Test-Path -LiteralPath $setup)) { Write-Output "not found: $setup"; exit 2 }
$argv = @('/reconfigure', '/quiet', '/noreboot') + @($p.arguments)
& $setup @argv
exit $LASTEXITCODE
