# ce first-boot action: install the driver packages ce copied from its payload store into
# %SystemRoot%\Drivers\ce\<name> (the boot driver itself is already bound offline; this registers the packages
# with PnP properly). The JSON parameters list the package folder names. Static text.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
$base = Join-Path $env:SystemRoot 'Drivers\ce'
$pnputil = Join-Path $env:SystemRoot 'System32\pnputil.exe'
$modern = [Environment]::OSVersion.Version.Build -ge 10240
$result = 0
foreach ($name in $p.packages) {
    $dir = Join-Path $base ([string]$name)
    foreach ($inf in (Get-ChildItem -LiteralPath $dir -Filter '*.inf' -File)) {
        $quoted = '"' + $inf.FullName + '"'
        if ($modern) { $argv = @('/add-driver', $quoted, '/install') } else { $argv = @('-i', '-a', $quoted) }
        $proc = Start-Process -FilePath $pnputil -ArgumentList $argv -Wait -PassThru -NoNewWindow
        Write-Output "$($inf.Name): pnputil exit code $($proc.ExitCode)"
        if ($proc.ExitCode -ne 0 -and $proc.ExitCode -ne 3010) { $result = $proc.ExitCode }
    }
}
exit $result
