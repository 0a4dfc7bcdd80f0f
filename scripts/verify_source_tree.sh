#!/usr/bin/env bash
# Verify an upstream source tree against a manifest of sha256 digests (sha256sum format, '#' comments).
#
#   bash scripts/verify_source_tree.sh <tree> <manifest> <dir>...
#
# Passes when every file the manifest lists exists with its digest AND the <dir>s under <tree>
# hold no other file (an added module would be imported as upstream code). Notebooks and
# __pycache__/*.pyc (made by an earlier install) are ignored. One line on stderr names the first
# problems; exit 1. Used by scripts/install_trademaster.sh (also for a tree that is not a git checkout)
# and scripts/install_finagent.sh (an exported tree whose COMMIT file is only a claim).
set -eu  # no pipefail: `head` closing a pipe early is not a failure here
tree=$1; manifest=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2
[ -d "$tree" ] || { echo "verify: $tree is not a directory" >&2; exit 1; }
[ -f "$manifest" ] || { echo "verify: manifest $manifest not found" >&2; exit 1; }
cd "$tree"
bad=$(grep -v '^#' "$manifest" | sha256sum --check --quiet --ignore-missing 2>/dev/null | sed 's/: .*//' | head -5 | tr '\n' ' ' || true)
missing=$(grep -v '^#' "$manifest" | awk '{print $2}' | while read -r f; do [ -f "$f" ] || echo "$f"; done | head -5 | tr '\n' ' ')
extra=$(find "$@" -type f ! -name '*.ipynb' ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' 2>/dev/null \
          | sed 's|^\./||' | sort | comm -23 - <(grep -v '^#' "$manifest" | awk '{print $2}' | sort) | head -5 | tr '\n' ' ')
if [ -n "$missing" ] || [ -n "$bad" ] || [ -n "$extra" ]; then
  echo "verify: $tree does not match $(basename "$manifest"):${missing:+ missing: $missing}${bad:+ changed: $bad}${extra:+ not upstream: $extra}" >&2
  exit 1
fi
echo "verified: $(grep -vc '^#' "$manifest") files of $tree match $(basename "$manifest")"
