#!/usr/bin/env bash
# A stand-in for python:3.11-slim built from Debian's packages, for a machine where no container
# registry answers but a Debian mirror does (the image test uses it then; docs/deployment.md):
#   scripts/bootstrap-base-image.sh [TAG]        TAG: textrnn-base:bookworm (default)
# Debian bookworm's python3 (3.11), python3-venv and ca-certificates, without the documentation,
# manual pages and translations, imported as an image. Needs root, mmdebstrap and docker.
# DEBIAN_MIRROR names another mirror (http://deb.debian.org/debian by default).
set -euo pipefail
TAG=${1:-textrnn-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# The merged-usr hook merges /usr itself; the usrmerge package would pull in perl (50 MB).
mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm - "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main" \
  | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG"
