# Renames $Path (under $Root) to $NewName, retrying while a file in it is locked.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Root, [string]$Path, [string]$NewName, [int]$Retries, [int]$DelaySeconds)
$ErrorActionPreference = 'Stop'
$src = Join-Path $Root $Path
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
Assert-NoLink @($Root, $src)
$attempt = 0
while ($true) {
    $attempt++
    try { Rename-Item -LiteralPath $src -NewName $NewName; break }
    catch {
        if ($attempt -ge $Retries) {
            $Ansible.Failed = $true
            $Ansible.Result = @{ attempts = $attempt; error = $_.Exception.Message }
            Write-Error "rename $Path -> $NewName failed after $attempt attempts: $($_.Exception.Message)"
            return
        }
        Start-Sleep -Seconds $DelaySeconds
    }
}
$Ansible.Changed = $true
$Ansible.Result = @{ attempts = $attempt }
