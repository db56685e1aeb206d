# Starts the agent's scheduled task (registered by win_scheduled_task just before).
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$TaskName)
$ErrorActionPreference = 'Stop'
Start-ScheduledTask -TaskName $TaskName
$Ansible.Changed = $true
