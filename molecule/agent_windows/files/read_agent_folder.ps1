# Molecule agent_windows, verify: what $User's agent folder holds after the converge, as one
# line of JSON (app-current's and app-failed's versions, whether app-backup is left, config.json,
# the versions of the app-replaced-* folders).
#
# Run by verify.yml through ansible.builtin.raw as `& { <this file> } -User '<name>'`: the name
# is checked there to be a plain user name first. tests/unit/test_powershell.py parses this file
# and checks its param() against that call.
param([string]$User)
$p = Get-CimInstance Win32_UserProfile | Where-Object { $_.LocalPath -like "*\$User" } | Select-Object -First 1
$root = Join-Path $p.LocalPath 'AppData\Local\DoAi-Desktop-Agent'
[pscustomobject]@{
    current = (Get-Content (Join-Path $root 'app-current\VERSION') -ErrorAction SilentlyContinue | Select-Object -First 1)
    failed = (Get-Content (Join-Path $root 'app-failed\VERSION') -ErrorAction SilentlyContinue | Select-Object -First 1)
    backup = (Test-Path (Join-Path $root 'app-backup'))
    config = (Get-Content (Join-Path $root 'app-current\config.json') -Raw -ErrorAction SilentlyContinue)
    replaced = @(Get-ChildItem -LiteralPath $root -Directory -Filter 'app-replaced-*' | ForEach-Object {
        Get-Content (Join-Path $_.FullName 'VERSION') -ErrorAction SilentlyContinue | Select-Object -First 1 })
} | ConvertTo-Json -Compress
