# An undo's config.json (the POSIX module's undo_config, same rules): settings unchanged since the
# rollback - the copy it made (byte for byte the file that stays) removed and the backup's own put
# back; changed - moved into app-current, the earlier ones kept as $KeepAs. Moves on one volume
# keep each file's owner and ACL. Every action is returned, so that a failed undo puts them back.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Root, [string]$Copy, [string]$Dest, [string]$Kept, [string]$KeepAs)
$ErrorActionPreference = 'Stop'
$copyPath = Join-Path $Root $Copy
$destPath = Join-Path $Root $Dest
$keptPath = if ($Kept) { Join-Path $Root $Kept } else { $null }
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
Assert-NoLink (@($Root, (Split-Path -Parent $copyPath), $copyPath, (Split-Path -Parent $destPath), $destPath,
               (Join-Path $Root $KeepAs)) + @($keptPath | Where-Object { $_ }))
$actions = New-Object System.Collections.ArrayList
function Move-Config([string]$From, [string]$To) {
    $t = Join-Path $Root $To
    if (Test-Path -LiteralPath $t) { throw "refused: $To exists" }
    Move-Item -LiteralPath (Join-Path $Root $From) -Destination $t
    [void]$actions.Add([ordered]@{ op = 'rename'; src = $From; dest = $To })
}
function Set-Done([string]$Settings, $KeptAs) {
    $Ansible.Changed = [bool]$actions.Count
    $Ansible.Result = [ordered]@{ settings = $Settings; actions = @($actions); kept_as = $KeptAs }
}
try {
    if ($keptPath -and -not (Test-Path -LiteralPath $keptPath)) { Set-Done 'done' $null; return }
    if (-not (Test-Path -LiteralPath $copyPath -PathType Leaf)) {
        if (Test-Path -LiteralPath $copyPath) { throw "refused: $Copy is not a file" }
        if ($Kept) { Move-Config $Kept $Copy }
        Set-Done 'none' $null; return
    }
    if ((Test-Path -LiteralPath $destPath -PathType Leaf) -and ((Get-FileHash -LiteralPath $copyPath -Algorithm SHA256).Hash -eq
                                                               (Get-FileHash -LiteralPath $destPath -Algorithm SHA256).Hash)) {
        Remove-Item -LiteralPath $copyPath
        [void]$actions.Add([ordered]@{ op = 'remove'; path = $Copy; same_as = $Dest })
        if ($Kept) { Move-Config $Kept $Copy }
        Set-Done 'unchanged' $null; return
    }
    $keptAs = $null
    if (Test-Path -LiteralPath $destPath) { Move-Config $Dest $KeepAs; $keptAs = $KeepAs }
    Move-Config $Copy $Dest
    if ($Kept) { Move-Config $Kept $Copy }
    Set-Done 'carried' $keptAs
} catch {
    # The moves done before the failure go back with the result: a put-back moves them back.
    $Ansible.Result = [ordered]@{ settings = 'failed'; actions = @($actions); kept_as = $null }
    $Ansible.Failed = $true
    Write-Error "undo_config: $($_.Exception.Message)"
}
