# A file moved from one app directory into another (a put-back of undo_config.ps1's moves).
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Root, [string]$Path, [string]$Dest)
$ErrorActionPreference = 'Stop'
$src = Join-Path $Root $Path
$dst = Join-Path $Root $Dest
# Junctions and symbolic links in the user's folder are refused, never followed (the folder is
# the user's; these scripts run with more rights), as the POSIX module refuses symlinks. The same
# function in every script that has it (tests/unit/test_powershell.py compares the copies).
function Assert-NoLink([string[]]$Paths) {
    foreach ($p in $Paths) {
        $i = Get-Item -LiteralPath $p -Force -ErrorAction SilentlyContinue
        if ($i -and ($i.Attributes -band [IO.FileAttributes]::ReparsePoint)) {
            throw "refused: $p is a junction or symbolic link (not followed)"
        }
    }
}
Assert-NoLink @($Root, (Split-Path -Parent $src), $src, (Split-Path -Parent $dst), $dst)
if (Test-Path -LiteralPath $dst) { throw "refused: $Dest exists" }
Move-Item -LiteralPath $src -Destination $dst
$Ansible.Changed = $true
