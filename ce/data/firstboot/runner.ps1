# ce first-boot runner. Started by winlogon as SYSTEM before the logon screen through
# HKLM\SYSTEM\Setup CmdLine (SetupType 2). Static text: no job value is ever written into this file; each action
# is a static script that reads its own JSON parameter file as data.
#
# Rules: an attempt is counted before the action runs (a crash or power loss still uses it up); an action is
# retried on later boots until its cap, never by forcing a reboot; after max_boots boots the runner disarms
# itself whatever is left; one JSON line per event goes to firstboot.log, which ce reads offline.
$ErrorActionPreference = 'Stop'
$Root = Split-Path -Parent $MyInvocation.MyCommand.Path
$PlanFile = Join-Path $Root 'plan.json'
$StateFile = Join-Path $Root 'state.json'
$LogFile = Join-Path $Root 'firstboot.log'
$SetupKey = 'HKLM:\SYSTEM\Setup'

function Write-Status([string]$Action, [int]$Attempt, [string]$Status, [string]$Detail) {
    $line = [ordered]@{ time = (Get-Date).ToUniversalTime().ToString('o'); action = $Action;
                        attempt = $Attempt; status = $Status; detail = $Detail } | ConvertTo-Json -Compress
    Add-Content -LiteralPath $LogFile -Value $line -Encoding UTF8
}

function Save-State($State) {
    $tmp = "$StateFile.tmp"
    $State | ConvertTo-Json -Depth 6 | Set-Content -LiteralPath $tmp -Encoding UTF8
    Move-Item -LiteralPath $tmp -Destination $StateFile -Force
}

function Disarm {
    Set-ItemProperty -LiteralPath $SetupKey -Name 'SetupType' -Value 0 -Type DWord
    Set-ItemProperty -LiteralPath $SetupKey -Name 'CmdLine' -Value '' -Type String
}

function Get-ActionState($State, [string]$Id) {
    if (-not ($State.actions.PSObject.Properties.Name -contains $Id)) {
        $State.actions | Add-Member -NotePropertyName $Id -NotePropertyValue ([pscustomobject]@{ attempts = 0; status = 'pending' })
    }
    return $State.actions.$Id
}

function Invoke-Action($Action) {
    # Each action runs in its own PowerShell with a time limit; its exit code is its verdict (3010 = reboot needed).
    $script = Join-Path $Root (Join-Path 'actions' $Action.script)
    $params = Join-Path $Root (Join-Path 'actions' ($Action.id + '.json'))
    $argv = @('-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', $script, '-ParamsFile', $params)
    $proc = Start-Process -FilePath (Join-Path $PSHOME 'powershell.exe') -ArgumentList ($argv | ForEach-Object { '"' + $_ + '"' }) -PassThru -NoNewWindow
    if (-not $proc.WaitForExit([int]$Action.timeout * 1000)) {
        Stop-Process -Id $proc.Id -Force -ErrorAction SilentlyContinue
        return -1
    }
    return $proc.ExitCode
}

try {
    $plan = Get-Content -Raw -LiteralPath $PlanFile | ConvertFrom-Json
    if (Test-Path -LiteralPath $StateFile) {
        $state = Get-Content -Raw -LiteralPath $StateFile | ConvertFrom-Json
    } else {
        $state = [pscustomobject]@{ boots = 0; actions = [pscustomobject]@{} }
    }
    $state.boots = [int]$state.boots + 1
    Save-State $state
    if ($state.boots -gt [int]$plan.max_boots) {
        Write-Status '*' 0 'gave-up' ('more than ' + $plan.max_boots + ' boots; disarmed')
        Disarm
        exit 0
    }
    $reboot = $false
    foreach ($action in $plan.actions) {
        $s = Get-ActionState $state $action.id
        if ($s.status -eq 'succeeded' -or $s.status -eq 'failed') { continue }
        if ([int]$s.attempts -ge [int]$action.retries) {
            $s.status = 'failed'
            Write-Status $action.id $s.attempts 'failed' 'retry cap reached'
            Save-State $state
            continue
        }
        $s.attempts = [int]$s.attempts + 1
        $s.status = 'running'
        Save-State $state
        Write-Status $action.id $s.attempts 'started' $action.name
        try { $code = Invoke-Action $action } catch { $code = -2; Write-Status $action.id $s.attempts 'error' $_.Exception.Message }
        if ($code -eq 0 -or $code -eq 3010) {
            $s.status = 'succeeded'
            if ($code -eq 3010) { $reboot = $true }
        } elseif ([int]$s.attempts -ge [int]$action.retries) {
            $s.status = 'failed'
        } else {
            $s.status = 'pending'
        }
        Write-Status $action.id $s.attempts $s.status ('exit code ' + $code)
        Save-State $state
    }
    $left = @($plan.actions | Where-Object { (Get-ActionState $state $_.id).status -eq 'pending' })
    if ($left.Count -eq 0) {
        Disarm
        Write-Status '*' 0 'complete' ''
    }
    if ($reboot) {
        Write-Status '*' 0 'reboot' 'an action asked for a restart (exit code 3010)'
        & (Join-Path $env:SystemRoot 'System32\shutdown.exe') /r /t 5 /d p:4:2
    }
} catch {
    # The runner itself failed (unreadable plan, full disk): record it and disarm, never loop the machine.
    try { Write-Status '*' 0 'runner-error' $_.Exception.Message } catch { }
    Disarm
}
exit 0
