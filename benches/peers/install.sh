#!/usr/bin/env bash
# Installs the peer runtimes of the cold-start benchmark into $PEERS_DIR
# (default: <repo>/target/peers), from the npm registry, pinned by
# benches/peers/package.json + package-lock.json:
#   - workerd  (npm `workerd`, native binary from @cloudflare/workerd-linux-*)
#   - deno     (npm `deno`, native binary from @deno/linux-*-glibc)
# and makes sure `node` >= 18 (and npm) exist, installing Debian's `nodejs`
# (and `npm`) with apt-get when they do not.
#
# npm install scripts are skipped (--ignore-scripts): both packages' postinstall
# only re-link or, when the platform package is missing, download the binary.
# We run the binaries straight from the platform packages instead, through the
# symlinks $PEERS_DIR/bin/{deno,workerd}. Nothing downloads at run time.
#
# Idempotent: a second run with the same lockfile and working binaries only
# re-checks and re-prints the versions.
#
# Output: `name version` lines, and $PEERS_DIR/versions.json.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$REPO/target/peers}"
mkdir -p "$PEERS_DIR"
PEERS_DIR="$(cd "$PEERS_DIR" && pwd)"

log() { echo "peers: $*" >&2; }

# --- node >= 18 and npm -------------------------------------------------------
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
if ! command -v node >/dev/null 2>&1 || [ "$(node_major)" -lt 18 ]; then
  log "installing nodejs with apt-get"
  apt_install nodejs
fi
if [ "$(node_major)" -lt 18 ]; then
  echo "peers: node >= 18 required, found $(node --version 2>/dev/null || echo none)" >&2
  exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
  log "installing npm with apt-get"
  apt_install npm
fi

# --- platform packages -----------------------------------------------------------
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)        DENO_PKG="@deno/linux-x64-glibc";   WORKERD_PKG="@cloudflare/workerd-linux-64" ;;
  Linux-aarch64|Linux-arm64) DENO_PKG="@deno/linux-arm64-glibc"; WORKERD_PKG="@cloudflare/workerd-linux-arm64" ;;
  *) echo "peers: unsupported platform $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
DENO_BIN="$PEERS_DIR/node_modules/$DENO_PKG/deno"
WORKERD_BIN="$PEERS_DIR/node_modules/$WORKERD_PKG/bin/workerd"

binaries_ok() {
  [ -x "$DENO_BIN" ] && [ -x "$WORKERD_BIN" ] \
    && "$DENO_BIN" --version >/dev/null 2>&1 \
    && "$WORKERD_BIN" --version >/dev/null 2>&1
}

# --- npm ci from the pinned lockfile -------------------------------------------
if cmp -s "$HERE/package-lock.json" "$PEERS_DIR/package-lock.json" \
   && cmp -s "$HERE/package.json" "$PEERS_DIR/package.json" \
   && binaries_ok; then
  log "up to date in $PEERS_DIR"
else
  log "npm ci into $PEERS_DIR"
  cp "$HERE/package.json" "$HERE/package-lock.json" "$PEERS_DIR/"
  npm ci --prefix "$PEERS_DIR" --ignore-scripts --no-audit --no-fund --loglevel=error >&2
  if ! binaries_ok; then
    echo "peers: deno or workerd binary missing or not runnable after npm ci" >&2
    echo "peers:   $DENO_BIN" >&2
    echo "peers:   $WORKERD_BIN" >&2
    exit 1
  fi
fi

mkdir -p "$PEERS_DIR/bin" "$PEERS_DIR/node_modules/.bin"
ln -sfn "../node_modules/$DENO_PKG/deno" "$PEERS_DIR/bin/deno"
ln -sfn "../node_modules/$WORKERD_PKG/bin/workerd" "$PEERS_DIR/bin/workerd"
# npm's node_modules/.bin/{deno,workerd} are node wrapper scripts (the skipped
# postinstalls would replace them); a node start in front of every deno or
# workerd start would be measured too, so point them at the binaries as well.
ln -sfn "../$DENO_PKG/deno" "$PEERS_DIR/node_modules/.bin/deno"
ln -sfn "../$WORKERD_PKG/bin/workerd" "$PEERS_DIR/node_modules/.bin/workerd"

# --- deno: project-local DENO_DIR, warmed by one run of hello.ts ---------------
# The first run of a module fills DENO_DIR (transpiled TS, V8 code cache) and
# is ~25-35 ms slower than every later one; `deno cache` alone does not fill
# the code cache, so start the server once and send it one request (loopback
# only, bounded to ~10 s).
export DENO_DIR="$PEERS_DIR/deno-dir" DENO_NO_UPDATE_CHECK=1
mkdir -p "$DENO_DIR"
warm_deno() {
  local port pid i
  port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
  env -i PATH="$PATH" PORT="$port" DENO_DIR="$DENO_DIR" DENO_NO_UPDATE_CHECK=1 \
    "$PEERS_DIR/bin/deno" run --no-config --no-lock --no-npm --cached-only --no-prompt \
    --allow-net=127.0.0.1 --allow-env=PORT "$HERE/deno/hello.ts" >/dev/null 2>&1 &
  pid=$!
  for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port" \
        && printf 'GET /?name=warm HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 \
        && grep -q '"Hello, warm"' <&3) 2>/dev/null; then
      kill "$pid"; wait "$pid" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  echo "peers: deno hello.ts did not answer on 127.0.0.1:$port" >&2
  return 1
}
warm_deno

# --- versions ----------------------------------------------------------------------
pkg_version() { node -p "require(process.argv[1]).version" "$PEERS_DIR/node_modules/$1/package.json"; }
WORKERD_VERSION="$(pkg_version workerd)"
DENO_VERSION="$("$PEERS_DIR/bin/deno" --version | awk 'NR==1 {print $2}')"
NODE_VERSION="$(node -p 'process.versions.node')"
if [ "$DENO_VERSION" != "$(pkg_version deno)" ]; then
  echo "peers: deno binary says $DENO_VERSION, npm package is $(pkg_version deno)" >&2
  exit 1
fi
printf '{"workerd": "%s", "deno": "%s", "node": "%s"}\n' \
  "$WORKERD_VERSION" "$DENO_VERSION" "$NODE_VERSION" > "$PEERS_DIR/versions.json"

echo "workerd $WORKERD_VERSION"
echo "deno $DENO_VERSION"
echo "node $NODE_VERSION"
