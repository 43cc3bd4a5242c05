#!/usr/bin/env bash
# wrangler's [build] command (wrangler.toml): builds the Worker into build/ with worker-build.
#
# Installs whatever is missing into <repo>/.tools (git-ignored), so a fresh machine works:
#   * wasm-bindgen-cli, exactly the wasm-bindgen version in workers/Cargo.lock
#     (worker-build would download it from GitHub; WASM_BINDGEN_BIN points it here);
#   * worker-build 0.8.7 itself.
# esbuild comes from wrangler's own npm dependency (ESBUILD_BIN); wasm-opt is disabled in
# Cargo.toml ([package.metadata.wasm-pack.profile.release]). Nothing is downloaded from GitHub.
set -euo pipefail
cd "$(dirname "$0")"
WORKERS=$PWD
TOOLS=$(cd .. && pwd)/.tools
WORKER_BUILD_VERSION=0.8.7

log() { printf '[headcount build] %s\n' "$*" >&2; }

wbg_version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[[ -n $wbg_version ]] || { log "wasm-bindgen not found in workers/Cargo.lock"; exit 1; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "adding Rust target wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi
# The build tools are compiled at opt-level 1: they run for seconds per build, and on a
# 2-core CI machine that saves about a quarter of their install (worker-build 358 s -> 276 s).
export CARGO_PROFILE_RELEASE_OPT_LEVEL=1
if [[ $("$TOOLS/bin/wasm-bindgen" --version 2>/dev/null) != "wasm-bindgen $wbg_version" ]]; then
  log "installing wasm-bindgen-cli $wbg_version into $TOOLS (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$wbg_version" --root "$TOOLS" --force
fi
if [[ $("$TOOLS/bin/worker-build" --version 2>/dev/null) != "$WORKER_BUILD_VERSION" ]]; then
  log "installing worker-build $WORKER_BUILD_VERSION into $TOOLS (a few minutes, once)"
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --root "$TOOLS" --force
fi
if [[ ! -x $WORKERS/node_modules/.bin/esbuild ]]; then
  log "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund
fi

# The Worker itself is built with its own release profile (Cargo.toml), not the tools'.
unset CARGO_PROFILE_RELEASE_OPT_LEVEL
export WASM_BINDGEN_BIN=$TOOLS/bin/wasm-bindgen
export ESBUILD_BIN=$WORKERS/node_modules/.bin/esbuild
exec "$TOOLS/bin/worker-build" --release "$@"
