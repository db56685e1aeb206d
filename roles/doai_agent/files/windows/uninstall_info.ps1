# The agent's uninstall entry (UninstallString, DisplayVersion) of each user. Changes nothing.
# The user's own HKCU (HKEY_USERS\<SID>): loaded while they are logged on, else read from their
# NTUSER.DAT under a temporary name and unloaded again.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string[]]$Users, [string]$UninstallKey)
$ErrorActionPreference = 'Stop'
$Ansible.Changed = $false
# The user's own HKCU (HKEY_USERS\<SID>): loaded while they are logged on, else read from their
# NTUSER.DAT under a temporary name and unloaded again.
$out = @{}
foreach ($u in $Users) {
    $prof = Get-CimInstance -ClassName Win32_UserProfile -Filter 'Special = FALSE' |
        Where-Object { (Split-Path -Leaf $_.LocalPath) -eq $u } | Select-Object -First 1
    if (-not $prof) { $out[$u] = $null; continue }
    $hive = "Registry::HKEY_USERS\$($prof.SID)"
    $mounted = $null
    if (-not (Test-Path -LiteralPath $hive)) {
        $mounted = "doai-$($prof.SID)"
        & reg.exe load "HKU\$mounted" (Join-Path $prof.LocalPath 'NTUSER.DAT') | Out-Null
        if ($LASTEXITCODE -ne 0) { $out[$u] = @{ error = "the user's registry hive cannot be loaded" }; continue }
        $hive = "Registry::HKEY_USERS\$mounted"
    }
    try {
        $key = Join-Path $hive (Join-Path 'Software\Microsoft\Windows\CurrentVersion\Uninstall' $UninstallKey)
        $props = Get-ItemProperty -LiteralPath $key -ErrorAction SilentlyContinue
        $out[$u] = @{ uninstall_string = $(if ($props) { $props.UninstallString } else { $null })
                      display_version = $(if ($props) { $props.DisplayVersion } else { $null }) }
    } finally {
        if ($mounted) { [GC]::Collect(); & reg.exe unload "HKU\$mounted" | Out-Null }
    }
}
$Ansible.Result = $out
