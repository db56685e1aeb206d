# Checks that the backend's Socket.IO port answers from this PC. Changes nothing.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Host_, [int]$Port, [int]$TimeoutSeconds)
$ErrorActionPreference = 'Stop'
$client = New-Object System.Net.Sockets.TcpClient
try {
  $wait = $client.BeginConnect($Host_, $Port, $null, $null)
  if (-not $wait.AsyncWaitHandle.WaitOne($TimeoutSeconds * 1000) -or -not $client.Connected) {
    throw "the backend's Socket.IO port ${Host_}:$Port is not reachable from this PC"
  }
  $client.EndConnect($wait)
} finally { $client.Close() }
$Ansible.Changed = $false
