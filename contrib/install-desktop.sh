#!/bin/sh
# Install "Open with siffs" for the current user (no root needed):
#   * the SIF MIME type, recognised by content as well as by the .sif extension
#     ($XDG_DATA_HOME/mime/packages/siffs.xml, then update-mime-database);
#   * the desktop entry, with its "Unmount" action ($XDG_DATA_HOME/applications/siffs-open.desktop);
#   * that entry as the default application for SIF images (xdg-mime default).
# Needs shared-mime-info and xdg-utils. siffs is $SIFFS, else this repository's .venv, else the
# one on PATH; its path is written into the desktop entry, which runs without your shell's PATH.
set -eu

here=$(dirname "$(readlink -f "$0")")
data=${XDG_DATA_HOME:-$HOME/.local/share}

siffs=${SIFFS:-}
if [ -z "$siffs" ] && [ -x "$here/../.venv/bin/siffs" ]; then
    siffs=$(readlink -f "$here/../.venv/bin/siffs")
fi
if [ -z "$siffs" ]; then
    siffs=$(command -v siffs) || { echo "install-desktop.sh: siffs not found: set SIFFS or install siffs" >&2; exit 1; }
fi
for tool in update-mime-database xdg-mime; do
    command -v "$tool" >/dev/null || { echo "install-desktop.sh: $tool not found: apt-get install shared-mime-info xdg-utils" >&2; exit 1; }
done
case "$siffs$here" in
    *[\"\`\$\\]*) echo "install-desktop.sh: a path contains one of \" \` \$ \\ : a desktop entry cannot hold it" >&2; exit 1 ;;
esac

mkdir -p "$data/mime/packages" "$data/applications"
cp "$here/desktop/siffs.xml" "$data/mime/packages/siffs.xml"
update-mime-database "$data/mime"
sed -e "s|^Exec=siffs-open |Exec=env \"SIFFS=$siffs\" \"$here/desktop/siffs-open\" |" \
    "$here/desktop/siffs-open.desktop" >"$data/applications/siffs-open.desktop"
if command -v update-desktop-database >/dev/null; then
    update-desktop-database "$data/applications"
fi
xdg-mime default siffs-open.desktop application/x-sif
echo "installed: SIF images open with siffs (type application/x-sif, entry $data/applications/siffs-open.desktop)"
