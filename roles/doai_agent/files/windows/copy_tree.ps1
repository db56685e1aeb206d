# Copies app-current whole ($Source to $Dest) before a reinstall. Refuses junctions and
# symbolic links anywhere in the tree (the folder is the user's: a link would make the copy read,
# or a later put-back write, outside it).
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Root, [string]$Source, [string]$Dest)
$ErrorActionPreference = 'Stop'
$src = Join-Path $Root $Source
$dst = Join-Path $Root $Dest
if (Test-Path -LiteralPath $dst) { $Ansible.Failed = $true; Write-Error "$Dest exists already"; return }
$links = @(@(Get-Item -LiteralPath $Root -Force) + @(Get-Item -LiteralPath $src -Force) +
           @(Get-ChildItem -LiteralPath $src -Recurse -Force -Attributes ReparsePoint) |
           Where-Object { $_.Attributes -band [IO.FileAttributes]::ReparsePoint })
if ($links.Count) {
    $Ansible.Failed = $true
    Write-Error "refused: junction or symbolic link in the agent folder: $($links[0].FullName)"
    return
}
Copy-Item -LiteralPath $src -Destination $dst -Recurse
$Ansible.Changed = $true
