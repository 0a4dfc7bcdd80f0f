#!/usr/bin/env bash
# Fetch the trading WebUI's own page templates for tests/test_webui_pages.py: upstream
# kihiu-ho/ibkr-trading-webui (Apache-2.0), its frontend/ folder (Jinja2 templates, static CSS) at the
# pinned commit, and Alpine.js (the pages' only script, loaded from a CDN upstream) from npm. Nothing
# of it enters this repository; the test renders the real templates in Chromium against the test
# WebUI server and skips, saying why, when this cache is absent.
#
# Usage:  bash scripts/install_webui_pages.sh
# Environment:
#   WEBUI_PAGES   where to put them (default: ~/.cache/tradeflow/webui-pages-<commit>; the test reads that)
#   WEBUI_GIT_DIR a local git repository (or mirror) holding the commit, exported with `git archive`
#   WEBUI_REPO_URL else cloned from here (default: the GitHub repository)
# Exits 0 with a note where git/npm or the network are missing (the test then skips).
set -euo pipefail
WEBUI_COMMIT=e04a6ef8041bb3da32f011b4dcb110b3cc0054b3
ALPINE_VERSION=3.15.0
WEBUI_PAGES=${WEBUI_PAGES:-$HOME/.cache/tradeflow/webui-pages-${WEBUI_COMMIT:0:7}}
WEBUI_REPO_URL=${WEBUI_REPO_URL:-https://github.com/kihiu-ho/ibkr-trading-webui.git}
note() { echo "note: $*; tests/test_webui_pages.py will skip" >&2; exit 0; }

if [ -f "$WEBUI_PAGES/COMMIT" ] && [ "$(cat "$WEBUI_PAGES/COMMIT")" = "$WEBUI_COMMIT" ] \
   && [ -f "$WEBUI_PAGES/alpinejs/dist/cdn.min.js" ]; then
  echo "WebUI pages @ ${WEBUI_COMMIT:0:7} already in $WEBUI_PAGES"; exit 0
fi
command -v git >/dev/null || note "git is not installed"
command -v npm >/dev/null || note "npm is not installed (Alpine.js comes from npm)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/pages"
if [ -n "${WEBUI_GIT_DIR:-}" ]; then
  git --git-dir="$WEBUI_GIT_DIR" archive "$WEBUI_COMMIT" frontend/templates frontend/static LICENSE | tar -x -C "$tmp/pages" \
    || note "commit $WEBUI_COMMIT not in $WEBUI_GIT_DIR"
else
  git clone --quiet --filter=blob:none --no-checkout "$WEBUI_REPO_URL" "$tmp/repo" 2>/dev/null \
    || note "cannot clone $WEBUI_REPO_URL"
  git -C "$tmp/repo" archive "$WEBUI_COMMIT" frontend/templates frontend/static LICENSE | tar -x -C "$tmp/pages"
fi
(cd "$tmp" && npm pack --silent "alpinejs@$ALPINE_VERSION" >/dev/null 2>&1) || note "npm cannot fetch alpinejs@$ALPINE_VERSION"
mkdir -p "$tmp/pages/alpinejs" && tar -xzf "$tmp/alpinejs-$ALPINE_VERSION.tgz" -C "$tmp/pages/alpinejs" --strip-components=1
echo "$WEBUI_COMMIT" >"$tmp/pages/COMMIT"
rm -rf "$WEBUI_PAGES" && mkdir -p "$(dirname "$WEBUI_PAGES")" && mv "$tmp/pages" "$WEBUI_PAGES"
echo "WebUI pages @ ${WEBUI_COMMIT:0:7} + alpinejs $ALPINE_VERSION in $WEBUI_PAGES"
