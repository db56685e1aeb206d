# What every target user's agent folder holds (app-current, app-backup, app-failed: their
# versions and config.json; the marker) and whether the agent runs. Changes nothing.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
[CmdletBinding(SupportsShouldProcess)]
param([string[]]$Users, [string]$FolderName, [string]$LocalPath, [string]$VersionFile, [string]$ExeName,
      [string]$Marker, [string]$ServiceName)
$ErrorActionPreference = 'Stop'
$Ansible.Changed = $false
# The PC's user profiles, not this WinRM session's %LOCALAPPDATA%.
$profiles = @(Get-CimInstance -ClassName Win32_UserProfile -Filter 'Special = FALSE' | ForEach-Object { $_.LocalPath })
if (-not $profiles) {
    $key = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList'
    $profiles = @(Get-ChildItem -LiteralPath $key | ForEach-Object { (Get-ItemProperty -LiteralPath $_.PSPath).ProfileImagePath })
}
$byUser = @{}
foreach ($p in $profiles) { if ($p) { $byUser[(Split-Path -Leaf $p)] = $p } }
$wanted = if ($Users) { $Users } else {
    @($byUser.Keys | Where-Object { Test-Path -LiteralPath (Join-Path (Join-Path $byUser[$_] $LocalPath) $FolderName) })
}
$procs = @(Get-CimInstance -ClassName Win32_Process | Where-Object { $_.ExecutablePath })
$service = if ($ServiceName) { Get-Service -Name $ServiceName -ErrorAction SilentlyContinue } else { $null }
$out = foreach ($u in $wanted) {
    if (-not $byUser.ContainsKey($u)) { [ordered]@{ user = $u; root = $null; profile = $false; folder = $false }; continue }
    $root = Join-Path (Join-Path $byUser[$u] $LocalPath) $FolderName
    $item = Get-Item -LiteralPath $root -Force -ErrorAction SilentlyContinue
    if ($item -and ($item.Attributes -band [IO.FileAttributes]::ReparsePoint)) {
        [ordered]@{ user = $u; root = $root; profile = $true; folder = $false; link = $true }; continue
    }
    $dirs = [ordered]@{}
    foreach ($name in 'app-current', 'app-backup', 'app-failed') {
        $d = Join-Path $root $name
        if (-not (Test-Path -LiteralPath $d -PathType Container)) { $dirs[$name] = $null; continue }
        $vf = Join-Path $d $VersionFile
        $exe = Join-Path $d $ExeName
        $version = if (Test-Path -LiteralPath $vf) { (Get-Content -LiteralPath $vf -TotalCount 1).Trim() }
                   elseif (Test-Path -LiteralPath $exe) { (Get-Item -LiteralPath $exe).VersionInfo.ProductVersion }
                   else { $null }
        $dirs[$name] = [ordered]@{ version = $version; config = (Test-Path -LiteralPath (Join-Path $d 'config.json')) }
    }
    $mf = Join-Path $root $Marker
    $marker = if (Test-Path -LiteralPath $mf) { Get-Content -LiteralPath $mf -Raw | ConvertFrom-Json } else { $null }
    $prefix = $root.TrimEnd('\') + '\'
    $running = if ($service) { $service.Status -eq 'Running' } else {
        [bool]@($procs | Where-Object { $_.ExecutablePath.StartsWith($prefix, [StringComparison]::OrdinalIgnoreCase) }).Count
    }
    [ordered]@{ user = $u; root = $root; profile = $true; folder = (Test-Path -LiteralPath $root -PathType Container)
                dirs = $dirs; running = $running; marker = $marker }
}
$Ansible.Result = @($out)
