#!/usr/bin/env bash
# Build the Arrow guest kernel (vmlinux), reproducibly and cached.
#
#   guest-kernel/build.sh            # or: make kernel
#
# Steps: install missing Debian packages -> unpack the pinned linux-source
# package -> apply guest-kernel/patches/*.patch in order -> tinyconfig +
# kernel-config/arrow.config -> make vmlinux -> store in the cache.
#
# The result is cached under ${XDG_CACHE_HOME:-$HOME/.cache}/arrow/kernel/<key>/
# where <key> is a sha256 over the source package name and version, the
# patches, the config fragment and this script. A second run with the same
# inputs prints the cached path at once.
#
# Output: progress on stderr; the LAST line on stdout is the absolute path
# of vmlinux (tests run `guest-kernel/build.sh | tail -n1`).
#
# Environment:
#   ARROW_KERNEL_SOURCE_VERSION  Debian version of linux-source-6.12 to build
#                                (default: the pinned one below)
#   ARROW_KERNEL_JOBS            make -j (default: number of CPUs)
#   ARROW_KERNEL_KEEP_BUILD=1    keep the build tree next to the result
#   ARROW_KERNEL_FORCE=1         rebuild even if the cache has the result
set -euo pipefail

# ---- pinned inputs -----------------------------------------------------------
SOURCE_PKG=linux-source-6.12
SOURCE_VERSION=${ARROW_KERNEL_SOURCE_VERSION:-6.12.117-1~deb12u1}
SOURCE_TARBALL=/usr/src/linux-source-6.12.tar.xz
BUILD_PKGS=(build-essential flex bison bc libelf-dev xz-utils)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PATCH_DIR=$HERE/patches
CONFIG_FRAGMENT=$ROOT/kernel-config/arrow.config
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/arrow/kernel
JOBS=${ARROW_KERNEL_JOBS:-$(nproc)}

# ---- progress and errors ------------------------------------------------------
STEP="start"
T0=$(date +%s)
log() { printf '[arrow-kernel %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
step() { STEP=$1; log "step: $STEP"; }
fail() { printf 'arrow-kernel: error in step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
on_err() {
    local rc=$?
    printf 'arrow-kernel: error: step "%s" failed (exit %d)%s\n' "$STEP" "$rc" \
        "${LOGFILE:+; see $LOGFILE}" >&2
    exit "$rc"
}
trap on_err ERR
LOGFILE=

# ---- cache key ------------------------------------------------------------------
step "compute cache key"
[[ -f $CONFIG_FRAGMENT ]] || fail "missing $CONFIG_FRAGMENT"
shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob
KEY=$(
    {
        printf 'source %s %s\n' "$SOURCE_PKG" "$SOURCE_VERSION"
        for p in "${PATCHES[@]}"; do
            printf 'patch %s %s\n' "$(basename "$p")" "$(sha256sum < "$p" | cut -d' ' -f1)"
        done
        printf 'config %s\n' "$(sha256sum < "$CONFIG_FRAGMENT" | cut -d' ' -f1)"
        printf 'script %s\n' "$(sha256sum < "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
    } | sha256sum | cut -c1-16
)
OUT_DIR=$CACHE_ROOT/$KEY
VMLINUX=$OUT_DIR/vmlinux

if [[ -f $VMLINUX && ${ARROW_KERNEL_FORCE:-0} != 1 ]]; then
    log "cached: $VMLINUX"
    echo "$VMLINUX"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
# One build at a time per cache (a developer and CI on the same machine).
exec 9>"$CACHE_ROOT/.lock"
if ! flock -n 9; then
    log "another kernel build holds $CACHE_ROOT/.lock; waiting"
    flock 9
fi
if [[ -f $VMLINUX && ${ARROW_KERNEL_FORCE:-0} != 1 ]]; then
    log "cached (built meanwhile): $VMLINUX"
    echo "$VMLINUX"
    exit 0
fi
log "building kernel $KEY ($SOURCE_PKG $SOURCE_VERSION, ${#PATCHES[@]} patches)"

# ---- packages ---------------------------------------------------------------------
step "install build dependencies"
installed_version() { dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null | awk '/^ii/ {print $2}'; }
MISSING=()
for p in "${BUILD_PKGS[@]}"; do
    [[ -n $(installed_version "$p") ]] || MISSING+=("$p")
done
if [[ $(installed_version "$SOURCE_PKG") != "$SOURCE_VERSION" ]]; then
    MISSING+=("$SOURCE_PKG=$SOURCE_VERSION")
fi
if ((${#MISSING[@]})); then
    log "installing: ${MISSING[*]}"
    SUDO=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || fail "packages missing (${MISSING[*]}); run as root or install them"
        SUDO=(sudo -n)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >&2 || fail "apt-get update failed"
    if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends --allow-downgrades \
        "${MISSING[@]}" >&2; then
        fail "apt-get install ${MISSING[*]} failed (is $SOURCE_PKG $SOURCE_VERSION still available? \
'apt-cache policy $SOURCE_PKG' lists versions; set ARROW_KERNEL_SOURCE_VERSION)"
    fi
fi
[[ -f $SOURCE_TARBALL ]] || fail "$SOURCE_TARBALL not found after installing $SOURCE_PKG"

# ---- unpack ---------------------------------------------------------------------------
step "unpack $SOURCE_TARBALL"
WORK=$(mktemp -d "$CACHE_ROOT/.build-$KEY.XXXXXX")
MAKE_PID=
cleanup() {
    # make passes a fatal signal on to the compilers it runs.
    [[ -z $MAKE_PID ]] || kill "$MAKE_PID" 2>/dev/null || true
    [[ ${ARROW_KERNEL_KEEP_BUILD:-0} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT
tar -xJf "$SOURCE_TARBALL" -C "$WORK"
SRC=$WORK/linux-source-6.12
[[ -f $SRC/Makefile ]] || fail "unexpected tarball layout (no linux-source-6.12/Makefile)"

# ---- patches ------------------------------------------------------------------------------
for p in "${PATCHES[@]}"; do
    step "apply patch $(basename "$p")"
    # --fuzz=0: a patch applies exactly to the pinned source or not at all.
    patch -d "$SRC" -p1 --forward --batch --quiet --fuzz=0 < "$p" >&2 \
        || fail "patch $(basename "$p") does not apply to $SOURCE_PKG $SOURCE_VERSION"
done

# ---- configuration -----------------------------------------------------------------------
MAKE=(make -C "$SRC" ARCH=x86_64 -j"$JOBS"
      KBUILD_BUILD_USER=arrow KBUILD_BUILD_HOST=arrow
      KBUILD_BUILD_TIMESTAMP="$SOURCE_PKG $SOURCE_VERSION" KBUILD_BUILD_VERSION=1)
# The log lives outside the build tree so that it survives a failed build.
LOGFILE=$CACHE_ROOT/build-$KEY.log
step "configure (tinyconfig + arrow.config)"
"${MAKE[@]}" tinyconfig > "$LOGFILE" 2>&1
(cd "$SRC" && scripts/kconfig/merge_config.sh -m .config "$CONFIG_FRAGMENT") >> "$LOGFILE" 2>&1
"${MAKE[@]}" olddefconfig >> "$LOGFILE" 2>&1

step "check configuration"
# Every option of the fragment must survive olddefconfig with its value;
# otherwise a dependency is missing or the option does not exist.
BAD=0
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        name=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
        got=$(grep -E "^$name=" "$SRC/.config" | cut -d= -f2- || true)
        if [[ $got != "$want" ]]; then
            log "  $name: arrow.config wants $want, .config has ${got:-it unset}"
            BAD=1
        fi
    elif [[ $line =~ ^\#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        name=${BASH_REMATCH[1]}
        if grep -qE "^$name=" "$SRC/.config"; then
            log "  $name: arrow.config wants it unset, .config has $(grep -E "^$name=" "$SRC/.config")"
            BAD=1
        fi
    fi
done < "$CONFIG_FRAGMENT"
((BAD == 0)) || fail "the final .config does not match kernel-config/arrow.config (see above)"

# ---- build ----------------------------------------------------------------------------------
step "make vmlinux (-j$JOBS; log: $LOGFILE)"
"${MAKE[@]}" vmlinux >> "$LOGFILE" 2>&1 &
MAKE_PID=$!
while kill -0 "$MAKE_PID" 2>/dev/null; do
    sleep 15
    if kill -0 "$MAKE_PID" 2>/dev/null; then
        n=$(grep -c '^  CC ' "$LOGFILE" || true)
        last=$(grep -E '^  (CC|LD|AR|AS) ' "$LOGFILE" | tail -n1 | sed 's/^ *//' || true)
        log "  building: $n files compiled; last: $last"
    fi
done
if ! wait "$MAKE_PID"; then
    MAKE_PID=
    { grep -E -m 20 '(error|Error [0-9]+|undefined reference)' "$LOGFILE" || tail -n 30 "$LOGFILE"; } >&2
    fail "make vmlinux failed (full log: $LOGFILE)"
fi
MAKE_PID=
[[ -f $SRC/vmlinux ]] || fail "make succeeded but produced no vmlinux"

# ---- store ------------------------------------------------------------------------------------
step "store in cache"
STAGE=$(mktemp -d "$CACHE_ROOT/.stage-$KEY.XXXXXX")
cp "$SRC/vmlinux" "$STAGE/vmlinux"
cp "$SRC/.config" "$STAGE/config"
mv "$LOGFILE" "$STAGE/build.log"
{
    printf 'key=%s\nsource=%s %s\n' "$KEY" "$SOURCE_PKG" "$SOURCE_VERSION"
    for p in "${PATCHES[@]}"; do printf 'patch=%s\n' "$(basename "$p")"; done
    printf 'built=%s\nbuild_seconds=%s\n' "$(date -u +%FT%TZ)" "$(( $(date +%s) - T0 ))"
} > "$STAGE/manifest"
rm -rf "$OUT_DIR"
mv "$STAGE" "$OUT_DIR"
if [[ ${ARROW_KERNEL_KEEP_BUILD:-0} == 1 ]]; then
    log "build tree kept at $WORK"
fi
log "done in $(( $(date +%s) - T0 ))s: $VMLINUX"
echo "$VMLINUX"
