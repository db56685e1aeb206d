# Waits for the agent in app-current to run, and checks its version is $Expected (when given).
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Root, [string]$VersionFile, [string]$ExeName, [string]$Expected, [int]$TimeoutSeconds,
      [string]$ServiceName)
$ErrorActionPreference = 'Stop'
$cur = Join-Path $Root 'app-current'
$vf = Join-Path $cur $VersionFile
$exe = Join-Path $cur $ExeName
$version = if (Test-Path -LiteralPath $vf) { (Get-Content -LiteralPath $vf -TotalCount 1).Trim() }
           elseif (Test-Path -LiteralPath $exe) { (Get-Item -LiteralPath $exe).VersionInfo.ProductVersion } else { $null }
$prefix = $cur.TrimEnd('\') + '\'
$deadline = (Get-Date).AddSeconds($TimeoutSeconds)
do {
    $running = if ($ServiceName) { (Get-Service -Name $ServiceName).Status -eq 'Running' } else {
        [bool]@(Get-CimInstance -ClassName Win32_Process | Where-Object {
            $_.ExecutablePath -and $_.ExecutablePath.StartsWith($prefix, [StringComparison]::OrdinalIgnoreCase) }).Count }
    if ($running) { break }
    Start-Sleep -Seconds 1
} while ((Get-Date) -lt $deadline)
$Ansible.Changed = $false
$Ansible.Result = @{ version = $version; running = $running }
if (-not $running -or ($Expected -and $version -ne $Expected)) {
    $Ansible.Failed = $true
    Write-Error "verify: running=$running, app-current version $version, expected $Expected"
}
