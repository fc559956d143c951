#!/usr/bin/env bash
# Vendors the console's one front-end package, htmx (npm: htmx.org), into
# recsink/ui/static/: fetched from the npm registry by npm itself at the version pinned in
# ui/package.json, its minified file copied and committed. Nothing is loaded from a CDN.
# Run it again after changing the version in ui/package.json.
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund --loglevel=error
cp node_modules/htmx.org/dist/htmx.min.js ../recsink/ui/static/htmx.min.js
echo "vendored htmx.org $(node -p 'require("./node_modules/htmx.org/package.json").version')"
