#!/usr/bin/env bash
# The README's first command: set everything up, build the example image from local
# material and show what siffs does with it. Output goes to ./example/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/install.sh
export PATH="$PWD/.venv/bin:$PATH"
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
echo
echo "Done: $out/example.sif"
