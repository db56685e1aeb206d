# agent_diagnose.yml on a Windows PC: a TCP connect to the backend's Socket.IO port, as the agent
# would make it (5 s). Prints doai-tcp-open, doai-tcp-timeout or doai-tcp-closed <why>.
#
# Run through ansible.builtin.raw as `& { <this file> } -Server '<host>' -Port <port>`: raw takes
# no parameters, so the playbook checks first that the host is a plain name or address and the
# port a number. tests/unit/test_powershell.py parses this file and checks its param() against
# that call.
param([string]$Server, [int]$Port)
$c = New-Object System.Net.Sockets.TcpClient
try {
    if ($c.ConnectAsync($Server, $Port).Wait(5000)) { 'doai-tcp-open' } else { 'doai-tcp-timeout' }
} catch { 'doai-tcp-closed ' + $_.Exception.InnerException.Message } finally { $c.Dispose() }
