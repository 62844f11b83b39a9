# ce first-boot action: put back a file's original security descriptor (owner, group, DACL). ce replaces a hive
# file offline with a new file, and ntfs-3g gives new files "Everyone: full control"; ce cannot write the
# original descriptor offline, so it stages it here, read from the image before the change, as hex data.
# Changing a DACL needs no share access, so this works on a loaded hive. Static text.
param([Parameter(Mandatory = $true)][string]$ParamsFile)
$ErrorActionPreference = 'Stop'
$p = Get-Content -Raw -LiteralPath $ParamsFile | ConvertFrom-Json
$hex = [string]$p.sd
$bytes = New-Object byte[] ($hex.Length / 2)
for ($i = 0; $i -lt $bytes.Length; $i++) { $bytes[$i] = [Convert]::ToByte($hex.Substring(2 * $i, 2), 16) }
$acl = Get-Acl -LiteralPath $p.path
$acl.SetSecurityDescriptorBinaryForm($bytes, [System.Security.AccessControl.AccessControlSections]'Access, Owner, Group')
Set-Acl -LiteralPath $p.path -AclObject $acl
exit 0
