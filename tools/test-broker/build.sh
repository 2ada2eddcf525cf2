#!/usr/bin/env bash
# Build tansu 0.6.0 with metadata.patch and group.patch applied to tansu-broker
# and fetch.patch to tansu-storage, and install it as
# $CARGO_HOME/bin/tansu-lungfish-$PATCH_VERSION. Needs only crates.io access.
# See README.md beside this file.
#
# Environment:
#   LUNGFISH_TEST_BROKER_DIR  work dir (default ~/.cache/lungfish-test-broker)
#   LUNGFISH_TEST_BROKER_FORCE=1  rebuild and reinstall even if installed
#   LUNGFISH_TEST_BROKER_CHECK=0  skip running check_metadata.py and
#                                 check_group.py afterwards
set -euo pipefail

PATCH_VERSION=3 # bump whenever a patch or this build changes
TANSU_VERSION=0.6.0

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PATCH="$HERE/metadata.patch"
FETCH_PATCH="$HERE/fetch.patch"
GROUP_PATCH="$HERE/group.patch"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
WORK="${LUNGFISH_TEST_BROKER_DIR:-$HOME/.cache/lungfish-test-broker}"
BIN="$CARGO_HOME/bin/tansu-lungfish-$PATCH_VERSION"
export CARGO_TARGET_DIR="$WORK/target"

log() { echo "test-broker: $*" >&2; }

if [[ "${LUNGFISH_TEST_BROKER_FORCE:-0}" != 1 && -x "$BIN" ]] && "$BIN" --help >/dev/null 2>&1; then
    log "$BIN already installed"
    exit 0
fi

command -v cargo >/dev/null || { log "cargo not found"; exit 1; }
apply_patch() { # FILE, in the crate dir; `git apply` works outside a repository too
    if command -v patch >/dev/null; then
        patch -p1 --forward --no-backup-if-mismatch <"$1"
    elif command -v git >/dev/null; then
        git apply -p1 "$1"
    else
        log "neither patch nor git found (apt-get install patch)"; return 1
    fi
}
mkdir -p "$WORK"

# 1. Get the pristine tansu and tansu-broker crates: resolve a throwaway
#    manifest depending on tansu, `cargo fetch` it, and take the .crate
#    tarballs from cargo's download cache.
find_crate() {
    local f
    for f in "$CARGO_HOME"/registry/cache/*/"$1-$TANSU_VERSION.crate"; do
        [[ -f "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}
if ! find_crate tansu >/dev/null || ! find_crate tansu-broker >/dev/null \
    || ! find_crate tansu-storage >/dev/null; then
    log "fetching tansu $TANSU_VERSION from crates.io"
    mkdir -p "$WORK/fetch/src"
    cat >"$WORK/fetch/Cargo.toml" <<EOF
[package]
name = "lungfish-test-broker-fetch"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
tansu = { version = "=$TANSU_VERSION", default-features = false }
tansu-broker = { version = "=$TANSU_VERSION", default-features = false }
tansu-storage = { version = "=$TANSU_VERSION", default-features = false }

[workspace]
EOF
    : >"$WORK/fetch/src/lib.rs"
    (cd "$WORK/fetch" && cargo fetch)
fi

# 2. Extract them into $WORK/src (only when the patch changed, so that
#    rebuilds stay incremental) and apply the patches.
STAMP="$(cat "$PATCH" "$GROUP_PATCH" "$FETCH_PATCH" "$HERE/build.sh" | sha256sum | cut -d' ' -f1)"
SRC="$WORK/src"
if [[ "$(cat "$SRC/.stamp" 2>/dev/null)" != "$STAMP" ]]; then
    log "extracting and patching sources in $SRC"
    rm -rf "$SRC"
    mkdir -p "$SRC"
    tar -xzf "$(find_crate tansu)" -C "$SRC"
    tar -xzf "$(find_crate tansu-broker)" -C "$SRC"
    tar -xzf "$(find_crate tansu-storage)" -C "$SRC"
    (cd "$SRC/tansu-broker-$TANSU_VERSION" && apply_patch "$PATCH" && apply_patch "$GROUP_PATCH")
    (cd "$SRC/tansu-storage-$TANSU_VERSION" && apply_patch "$FETCH_PATCH")

    # The tansu crate itself is the wrapper: its src/bin/tansu.rs main, its
    # features, and its Cargo.lock (what `cargo install --locked` would use),
    # with tansu-broker redirected to the patched copy.
    TANSU="$SRC/tansu-$TANSU_VERSION"
    cp "$TANSU/Cargo.lock" "$TANSU/Cargo.lock.orig"
    cat >>"$TANSU/Cargo.toml" <<EOF

# --- added by lungfish tools/test-broker/build.sh ---
[workspace]

[patch.crates-io]
tansu-broker = { path = "../tansu-broker-$TANSU_VERSION" }
tansu-storage = { path = "../tansu-storage-$TANSU_VERSION" }

# Plain dev profile without debug info: builds in ~4 min (opt-level 1: ~8,
# release: ~35) and still handles a few 100k small messages in seconds.
[profile.dev]
debug = false
EOF
    echo "$STAMP" >"$SRC/.stamp"
fi
TANSU="$SRC/tansu-$TANSU_VERSION"

# 3. Build. The only Cargo.lock changes allowed are tansu-broker and
#    tansu-storage becoming path packages (no source/checksum); everything
#    else stays as locked.
cd "$TANSU"
cargo fetch
if ! diff <(grep -v -e '^source = ' -e '^checksum = ' Cargo.lock.orig) \
          <(grep -v -e '^source = ' -e '^checksum = ' Cargo.lock) >/dev/null; then
    log "Cargo.lock changed beyond the tansu-broker and tansu-storage patches:"
    diff Cargo.lock.orig Cargo.lock >&2 || true
    exit 1
fi
log "building (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
start=$(date +%s)
nice -n 10 cargo build --locked --features dynostore --bin tansu
log "build took $(( $(date +%s) - start ))s"

mkdir -p "$CARGO_HOME/bin"
cp "$CARGO_TARGET_DIR/debug/tansu" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
"$BIN" --help >/dev/null
log "installed $BIN"

# 4. Check that committed metadata round-trips and that a group survives the
#    death of its leader.
if [[ "${LUNGFISH_TEST_BROKER_CHECK:-1}" != 0 ]]; then
    python3 "$HERE/check_metadata.py" --broker "$BIN"
    python3 "$HERE/check_group.py" --broker "$BIN"
fi
