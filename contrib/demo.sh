#!/usr/bin/env bash
# The README's first command: set everything up, build the example image from local
# material and show what siffs does with it. Output goes to ./example/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/install.sh
export PATH="$PWD/.venv/bin:$PATH"   # siffs, and the venv's python3 with cryptography
out=example
rm -rf "$out" && mkdir -p "$out"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building a busybox root filesystem with Singularity metadata in $out/rootfs"
python3 contrib/example/mkrootfs.py "$out/rootfs"
mksquashfs "$out/rootfs" "$out/rootfs.squashfs" -all-root -noappend -quiet -no-progress >/dev/null
step "Wrapping it into a SIF with siffs' own writer: $out/example.sif"
siffs create "$out/example.sif" "$out/rootfs.squashfs" \
    --deffile "$out/rootfs/.singularity.d/Singularity" --labels "$out/rootfs/.singularity.d/labels.json"
step "siffs header $out/example.sif"
siffs header "$out/example.sif"
step "siffs list $out/example.sif"
siffs list "$out/example.sif"
primary=$(siffs list --json "$out/example.sif" | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary_partition"])')
step "siffs info $primary $out/example.sif"
siffs info "$primary" "$out/example.sif"
step "siffs dump 1 $out/example.sif (the definition file)"
siffs dump 1 "$out/example.sif"

# The demo keeps its keyring and caches under $out, never in your home directory.
export XDG_CONFIG_HOME="$PWD/$out/config" XDG_CACHE_HOME="$PWD/$out/cache" XDG_STATE_HOME="$PWD/$out/state"
step "Signing it with a new Ed25519 key (DSSE, as 'singularity sign --key' does)"
python3 - "$out" <<'PY'
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ed25519
key = ed25519.Ed25519PrivateKey.generate()
out = Path(sys.argv[1])
(out / "signing-key.pem").write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
(out / "signing-key.pub.pem").write_bytes(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
PY
siffs sign "$out/example.sif" --key "$out/signing-key.pem"
step "siffs verify $out/example.sif --key $out/signing-key.pub.pem"
siffs verify "$out/example.sif" --key "$out/signing-key.pub.pem"
step "Trusting that key and mounting the image (verified, read-only, FUSE)"
siffs key import "$out/signing-key.pub.pem"
mkdir -p "$out/mnt"
siffs mount "$out/example.sif" "$out/mnt"
trap 'siffs umount "$out/mnt" 2>/dev/null || true' EXIT
df -h "$out/mnt" | sed 's/^/  /'
step "Browsing the mount"
ls -la "$out/mnt" "$out/mnt/.singularity.d"
cat "$out/mnt/.singularity.d/labels.json"
siffs umount "$out/mnt"
trap - EXIT
step "Peeking without mounting: siffs ls -l / siffs cat"
siffs ls -l "$out/example.sif" /etc
siffs cat "$out/example.sif" /.singularity.d/runscript
step "siffs inspect --labels $out/example.sif"
siffs inspect --labels "$out/example.sif"
step "siffs run $out/example.sif from the demo   (verified, mounted, run, unmounted)"
siffs run "$out/example.sif" from the demo
echo
echo "Done: $out/example.sif"
