# The agent as a service: its installer runs machine-wide, here, as the WinRM account.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Path, [string[]]$Arguments, [int]$TimeoutSeconds)
$ErrorActionPreference = 'Stop'
$p = Start-Process -FilePath $Path -ArgumentList $Arguments -PassThru -WindowStyle Hidden
$Ansible.Changed = $true
if (-not $p.WaitForExit($TimeoutSeconds * 1000)) {
    Stop-Process -Id $p.Id -Force
    $Ansible.Failed = $true; Write-Error "$Path still running after $TimeoutSeconds s: stopped"; return
}
$Ansible.Result = @{ exit_code = $p.ExitCode }
if ($p.ExitCode -ne 0) { $Ansible.Failed = $true; Write-Error "$Path exited with $($p.ExitCode)" }
