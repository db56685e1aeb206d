# A per-user installer or uninstaller runs in the user's context: a scheduled task running as the
# user (registered by win_scheduled_task), started here and waited for; its exit code counts.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$TaskName, [int]$TimeoutSeconds)
$ErrorActionPreference = 'Stop'
$before = (Get-ScheduledTaskInfo -TaskName $TaskName).LastRunTime
Start-ScheduledTask -TaskName $TaskName
$deadline = (Get-Date).AddSeconds($TimeoutSeconds)
do {
    Start-Sleep -Seconds 1
    $state = (Get-ScheduledTask -TaskName $TaskName).State
    $info = Get-ScheduledTaskInfo -TaskName $TaskName
} while (($state -eq 'Running' -or $info.LastRunTime -eq $before) -and (Get-Date) -lt $deadline)
$Ansible.Changed = $true
$Ansible.Result = @{ state = "$state"; exit_code = $info.LastTaskResult }
if ($state -eq 'Running') {
    Stop-ScheduledTask -TaskName $TaskName
    $Ansible.Failed = $true; Write-Error "$TaskName still running after $TimeoutSeconds s: stopped"; return
}
if ($info.LastTaskResult -ne 0) { $Ansible.Failed = $true; Write-Error "$TaskName exited with $($info.LastTaskResult)" }
