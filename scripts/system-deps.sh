#!/usr/bin/env bash
# The system tools nanocode uses, installed when missing (Debian/Ubuntu apt, as root); `make demo`
# and `make test` run this first, so a fresh machine needs nothing installed by hand:
#   bwrap (bubblewrap)  the sandbox model-written commands run in: factory rollouts, the agentic eval
#   node (nodejs)       four shipped scenarios run JavaScript tests (without it they become rejects)
#   tmux                the terminal agent's end-to-end test drives it       (test only)
#   chromium + driver   the factory view's browser test                      (test only)
# Usage: scripts/system-deps.sh demo|test. Where apt cannot install (not root, no apt), it says
# which tool is missing and what that costs, and goes on.
set -uo pipefail
need=(bwrap:bubblewrap node:nodejs)
[ "${1:-demo}" = test ] && need+=(tmux:tmux chromium:chromium chromedriver:chromium-driver)
missing=()
for pair in "${need[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} (apt-get)" >&2
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
   && { apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }; }; then
  exit 0
fi
echo "warning: could not install ${missing[*]}: without bubblewrap the factory and the agentic eval refuse" \
     "model-written commands (--unsafe-bash overrides); without node 4 scenarios are rejects; without" \
     "tmux/chromium their tests are skipped" >&2
