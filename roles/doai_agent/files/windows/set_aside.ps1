# Sets $Path aside as $NewName (nothing to do when it is absent), retrying while a file in it is locked.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Root, [string]$Path, [string]$NewName, [int]$Retries, [int]$DelaySeconds)
$ErrorActionPreference = 'Stop'
$src = Join-Path $Root $Path
$Ansible.Changed = $false
if (-not (Test-Path -LiteralPath $src)) { $Ansible.Result = @{ moved = $false }; return }
if ((Get-Item -LiteralPath $src -Force).Attributes -band [IO.FileAttributes]::ReparsePoint) {
    $Ansible.Failed = $true; Write-Error "refused: $Path is a junction or symbolic link"; return
}
$attempt = 0
while ($true) {
    $attempt++
    try { Rename-Item -LiteralPath $src -NewName $NewName; break }
    catch {
        if ($attempt -ge $Retries) {
            $Ansible.Failed = $true
            Write-Error "set aside $Path -> $NewName failed after $attempt attempts: $($_.Exception.Message)"
            return
        }
        Start-Sleep -Seconds $DelaySeconds
    }
}
$Ansible.Changed = $true
$Ansible.Result = @{ moved = $true; attempts = $attempt }
