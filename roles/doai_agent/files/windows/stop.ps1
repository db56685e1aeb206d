# Stops the agent's processes (those whose executable is under $Root) and waits for them to exit.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Root, [int]$TimeoutSeconds)
$ErrorActionPreference = 'Stop'
$prefix = $Root.TrimEnd('\') + '\'
function Get-Agent { @(Get-CimInstance -ClassName Win32_Process | Where-Object {
    $_.ExecutablePath -and $_.ExecutablePath.StartsWith($prefix, [StringComparison]::OrdinalIgnoreCase) }) }
$found = Get-Agent
foreach ($p in $found) { Stop-Process -Id $p.ProcessId -Force -ErrorAction SilentlyContinue }
$deadline = (Get-Date).AddSeconds($TimeoutSeconds)
while ((Get-Agent).Count -and (Get-Date) -lt $deadline) { Start-Sleep -Milliseconds 500 }
$left = @(Get-Agent | ForEach-Object { $_.ProcessId })
$Ansible.Changed = [bool]$found.Count
$Ansible.Result = @{ stopped = @($found | ForEach-Object { $_.ProcessId }); still_running = $left }
if ($left.Count) { $Ansible.Failed = $true; Write-Error "agent still running after $TimeoutSeconds s: $($left -join ', ')" }
