#!/usr/bin/env bash
# Install everything siffs needs on Debian 12 (run as root; idempotent): the system packages
# and a virtual environment in .venv with siffs and its Python dependencies.
#
# The venv is made from Debian's /usr/bin/python3 on purpose: an interpreter under a
# root-only directory (pyenv in /root) could not be run by the unprivileged users that the
# tests and the FUSE daemon run as.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
    python3 python3-venv python3-dev gcc pkg-config   # the venv and the pyfuse3 build
    patch                                              # contrib/build-pyfuse3.sh: siffs' pyfuse3 patches
    fuse3 libfuse3-dev                                 # FUSE: fusermount3 and the library pyfuse3 binds
    fuse2fs fuse-overlayfs e2fsprogs                   # run: ext3 overlays (images, SIF partitions); debugfs reads them back in tests
    squashfs-tools squashfs-tools-ng                   # mksquashfs/gensquashfs: building images
    busybox-static                                     # content of the example and test images
    gnupg gpgv                                         # OpenPGP signatures (verify and sign)
    charliecloud runc uidmap                           # running mounted images (ch-run, rootless runc)
    golang-go golang-github-sylabs-sif-dev             # interop tests against the reference SIF library
    openssh-client                                     # ssh-keygen -l: the tests check DSSE key IDs with it
    attr util-linux squashfuse                         # xattr tools, setpriv, benchmark peers
    docker-registry apache2-utils umoci                # registry tests: a real OCI registry, htpasswd, the unpack oracle
    casync zsync nginx                                 # delta transfer: interop oracles and the test HTTP server
    cryptsetup-bin gocryptfs openssl                   # encrypted images: the real tools as test oracles
    libgcrypt20                                        # AES-GCM of encrypted (gocryptfs) images: faster per block than OpenSSL 3.0
    systemd                                            # the user unit under a real systemd --user (tests/contrib)
    shared-mime-info xdg-utils libfile-mimeinfo-perl libglib2.0-bin desktop-file-utils man-db zsh pipx  # contrib/: desktop (MIME type, handler), man pages, zsh completion, pipx install
)

need=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    echo "siffs: installing Debian packages: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
# pyfuse3 with siffs' patches (kernel caches, fewer system calls per request). If the build
# fails the stock pyfuse3 stays: siffs detects the patches and is only slower without them.
bash contrib/build-pyfuse3.sh .venv ||
    echo "siffs: patched pyfuse3 not built; siffs runs on the stock one (slower: README, Performance)" >&2
