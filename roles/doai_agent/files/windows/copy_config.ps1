# Copies the user's config.json from $Source to $Dest (an existing one is kept as $KeepAs),
# with the source's owner and access rules.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Root, [string]$Source, [string]$Dest, [string]$KeepAs)
$ErrorActionPreference = 'Stop'
$src = Join-Path $Root $Source
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
if (-not (Test-Path -LiteralPath $src)) { $Ansible.Result = @{ copied = $false; kept = $false }; return }
$kept = $false
if (Test-Path -LiteralPath $dst) { Rename-Item -LiteralPath $dst -NewName (Split-Path -Leaf $KeepAs); $kept = $true }
Copy-Item -LiteralPath $src -Destination $dst
# The user's file stays the user's: the source's owner and access rules, not this account's.
$sd = Get-Acl -LiteralPath $src
$ownerKept = $true
try { Set-Acl -LiteralPath $dst -AclObject $sd }
catch {
    $ownerKept = $false
    $acl = Get-Acl -LiteralPath $dst
    $acl.SetSecurityDescriptorSddlForm($sd.GetSecurityDescriptorSddlForm('Access'), 'Access')
    Set-Acl -LiteralPath $dst -AclObject $acl
}
$Ansible.Changed = $true
$Ansible.Result = @{ copied = $true; kept = $kept; owner_kept = $ownerKept }
