# Molecule agent_windows, prepare: the starting point on the test PC for $User - app-current
# holding version 2.0.0 and a config.json, app-backup 1.9.0. An existing app-current is left
# alone (use a test VM, not a PC with a real agent).
#
# Run by prepare.yml through ansible.builtin.raw (no collection needed) as
# `& { <this file> } -User '<name>'`: the name is checked there to be a plain user name first.
# tests/unit/test_powershell.py parses this file and checks its param() against that call.
param([string]$User)
$p = Get-CimInstance Win32_UserProfile | Where-Object { $_.LocalPath -like "*\$User" } | Select-Object -First 1
if (-not $p) { throw 'no profile' }
$root = Join-Path $p.LocalPath 'AppData\Local\DoAi-Desktop-Agent'
if (-not (Test-Path (Join-Path $root 'app-current'))) {
    foreach ($v in @(@('app-current', '2.0.0'), @('app-backup', '1.9.0'))) {
        $d = New-Item -ItemType Directory -Force -Path (Join-Path $root $v[0])
        Set-Content -Path (Join-Path $d 'VERSION') -Value $v[1]
    }
    Set-Content -Path (Join-Path $root 'app-current\config.json') -Value '{"user_setting": "kept"}'
}
