#!/bin/sh
# Install PyTorch into a Python environment: the one place the torch version and build live.
# Used by `make setup` and by the Dockerfile.
#   scripts/install-torch.sh PYTHON [FLAVOUR]    FLAVOUR: cpu (default), cu126, cu128, ...
# Only torch itself comes from the PyTorch index (its CPU build has no CUDA libraries);
# its dependencies come from PyPI when the package is installed.
set -eu
PYTHON=$1
FLAVOUR=${2:-cpu}
VERSION=2.13.0
if "$PYTHON" -c "import sys, torch; sys.exit(torch.__version__ != '$VERSION+$FLAVOUR')" 2>/dev/null; then
    echo "torch $VERSION+$FLAVOUR already installed"
    exit 0
fi
case "$(uname -s)" in
    Darwin) SPEC="torch==$VERSION" ;;  # macOS wheels have no local version label
    *) SPEC="torch==$VERSION+$FLAVOUR" ;;
esac
# TORCH_INDEX_URL names another index for torch (a mirror of PyTorch's); set but empty, torch
# comes from pip's own indexes and find-links only.
INDEX=${TORCH_INDEX_URL-https://download.pytorch.org/whl/$FLAVOUR}
exec "$PYTHON" -m pip install --no-deps ${INDEX:+--extra-index-url "$INDEX"} "$SPEC"
