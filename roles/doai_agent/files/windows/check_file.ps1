# Checks the installer on the PC: its sha256 is $Sha256 (when given). With $Publisher: the
# installer must also carry a valid Authenticode signature (status Valid: the file unchanged since
# signing, the chain trusted by the PC) whose signer certificate's common name is $Publisher.
#
# Run by the doai_agent_swap action plugin through ansible.windows.win_powershell. Every value
# arrives as a parameter of the param() block, never as text; the plugin's PS_PARAMS names them.
# tests/unit/test_powershell.py parses this file with the tree-sitter PowerShell grammar.
param([string]$Path, [string]$Sha256, [string]$Publisher)
$ErrorActionPreference = 'Stop'
$Ansible.Changed = $false
$item = Get-Item -LiteralPath $Path -Force
if ($item.Attributes -band [IO.FileAttributes]::ReparsePoint) {
    $Ansible.Failed = $true; Write-Error "refused: $Path is a junction or symbolic link"; return
}
$hash = (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
$Ansible.Result = @{ sha256 = $hash }
if ($Sha256 -and $hash -ne $Sha256.ToLowerInvariant()) {
    $Ansible.Failed = $true; Write-Error "the installer on the PC has sha256 $hash, not $Sha256"; return
}
if ($Publisher) {
    $sig = Get-AuthenticodeSignature -LiteralPath $Path
    $signer = ''
    if ($sig.SignerCertificate) {
        $signer = $sig.SignerCertificate.GetNameInfo([Security.Cryptography.X509Certificates.X509NameType]::SimpleName, $false)
    }
    $Ansible.Result.signature = "$($sig.Status)"
    $Ansible.Result.publisher = $signer
    if ($sig.Status -ne [System.Management.Automation.SignatureStatus]::Valid) {
        $Ansible.Failed = $true; Write-Error "the installer's Authenticode signature is $($sig.Status), not Valid: refused"; return
    }
    if ($signer -ne $Publisher) {
        $Ansible.Failed = $true; Write-Error "the installer is signed by '$signer', not by the expected publisher '$Publisher': refused"
    }
}
