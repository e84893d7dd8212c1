#!/usr/bin/env bash
# gitlab-ci-local (npm) into .tools/node, for testing .gitlab-ci.yml without a GitLab runner.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.65.0
DEST=.tools/node
if command -v rsync >/dev/null && [ -x "$DEST/node_modules/.bin/gitlab-ci-local" ] && \
   [ "$("$DEST/node_modules/.bin/gitlab-ci-local" --version 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
if ! command -v rsync >/dev/null; then  # gitlab-ci-local copies the work tree with rsync
  (apt-get update -qq && apt-get install -y -qq rsync) >/dev/null
fi
mkdir -p "$DEST"
npm install --silent --no-audit --no-fund --prefix "$DEST" "gitlab-ci-local@$VERSION" >/dev/null
mkdir -p .tools/bin
ln -sf "../node/node_modules/.bin/gitlab-ci-local" .tools/bin/gitlab-ci-local
echo "gitlab-ci-local $VERSION installed in $DEST"
