# The run's own directory for the installer: made here, never one that exists already (users may
# create folders under ProgramData), and writable only by Administrators and SYSTEM (users read and
# execute: the installer runs as the user), so the checked file stays the file that runs.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Dir)
$ErrorActionPreference = 'Stop'
$item = Get-Item -LiteralPath $Dir -Force -ErrorAction SilentlyContinue
if ($item) { $Ansible.Failed = $true; Write-Error "refused: $Dir exists already (not made by this run)"; return }
$parent = Split-Path -Parent $Dir
New-Item -ItemType Directory -Force -Path $parent | Out-Null
if ((Get-Item -LiteralPath $parent -Force).Attributes -band [IO.FileAttributes]::ReparsePoint) {
    $Ansible.Failed = $true; Write-Error "refused: $parent is a junction or symbolic link"; return
}
New-Item -ItemType Directory -Path $Dir | Out-Null
& icacls.exe $Dir /inheritance:r /grant:r '*S-1-5-32-544:(OI)(CI)F' '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-545:(OI)(CI)RX' | Out-Null
if ($LASTEXITCODE -ne 0) { $Ansible.Failed = $true; Write-Error "icacls on $Dir failed ($LASTEXITCODE)"; return }
$Ansible.Changed = $true
