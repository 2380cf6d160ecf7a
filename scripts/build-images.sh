#!/usr/bin/env bash
# build-images.sh - build the jobgraph test images locally, with no registry.
#
#   localhost/jobgraph-test:latest    busybox (Debian busybox-static), ~2 MB, CMD /bin/sh
#   localhost/jobgraph-python:latest  Debian bookworm minbase + python3, ~170 MB
#   localhost/jobgraph-sql-job:latest the seed demo's job image: jobgraph-python + jobgraph's demo SQL job
#                                     (podman build; its layer cache makes a rebuild ~1 s)
#
# The test and python images are skipped when they already exist, unless FORCE=1; the demo SQL job
# image is rebuilt every time (from podman's layer cache, ~0.3 s) so it always has the current job.
# Env: FORCE=1         rebuild both images (and ignore the cached python rootfs)
#      ONLY=test|python|sql build only one of them (sql builds python first)
#      CACHE_DIR       where the python rootfs tarball is cached (default ~/.cache/jobgraph)
#      SUITE           Debian suite of the python image (default bookworm)
#      MIRROR          Debian mirror (default: the one apt is configured with here)
# Needs podman configured by setup-podman.sh; installs mmdebstrap if missing.
# Run it from anywhere: paths are relative to this script's repository.
set -euo pipefail

TEST_IMAGE=localhost/jobgraph-test:latest
PY_IMAGE=localhost/jobgraph-python:latest
SQL_IMAGE=localhost/jobgraph-sql-job:latest
REPO=$(cd "$(dirname "$0")/.." && pwd)
FORCE=${FORCE:-0}
ONLY=${ONLY:-all}
SUITE=${SUITE:-bookworm}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jobgraph}
PY_CACHE_TAR="$CACHE_DIR/python-$SUITE-minbase-rootfs.tar"
LOG=${BUILD_IMAGES_LOG:-/tmp/build-images.log}
ENV_PATH='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
export DEBIAN_FRONTEND=noninteractive

t_start=$EPOCHREALTIME
say() { printf '[build-images] %s\n' "$*"; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2fs", b-a}'; }
die() { say "ERROR: $*"; [ -s "$LOG" ] && tail -20 "$LOG" >&2; exit 1; }
: >"$LOG"

command -v podman >/dev/null || die "podman not installed: run setup-podman.sh first"
WORK=$(mktemp -d /tmp/build-images.XXXXXX)
# conmon drops an `oom` marker file in its working directory: keep it in the scratch folder, not the checkout.
cd "$WORK"
trap 'rm -rf "$WORK"' EXIT

image_exists() { podman image exists "$1"; }
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
# after a FORCE rebuild, drop the old (now untagged) image; fails harmlessly if in use
drop_old() {  # drop_old OLD_ID IMAGE
    local new; new=$(image_id "$2")
    if [ -n "$1" ] && [ "$1" != "$new" ]; then podman rmi "$1" >/dev/null 2>&1 || true; fi
}

# apt-get update only when a package has no install candidate
ensure_candidate() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/{print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        local t=$EPOCHREALTIME
        apt-get update -q >>"$LOG" 2>&1 || die "apt-get update failed"
        say "apt-get update: $(elapsed "$t")"
    fi
}

# The Debian archive apt uses here: first 'deb' entry of sources.list(.d) whose
# suite is $SUITE, else the first non-security entry, else deb.debian.org.
detect_mirror() {
    local files=() f
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || { echo http://deb.debian.org/debian; return; }
    awk -v suite="$SUITE" '
        function emit(uri, suites,   n, s, i) {
            n = split(suites, s, /[ \t]+/)
            for (i = 1; i <= n; i++) if (s[i] == suite && !exact) exact = uri
            if (!any && uri !~ /security/) any = uri
        }
        function stanza_end() {
            if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no" && uris != "") {
                split(uris, u, /[ \t]+/); emit(u[1], suites)
            }
            types = uris = suites = enabled = ""
        }
        FNR == 1 { if (NR > 1 && deb822) stanza_end(); deb822 = (FILENAME ~ /\.sources$/) }
        deb822 {
            if ($0 ~ /^[ \t]*$/) { stanza_end(); next }
            if ($0 ~ /^#/) next
            key = tolower($1); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
            if (key == "types:") types = val
            else if (key == "uris:") uris = val
            else if (key == "suites:") suites = val
            else if (key == "enabled:") enabled = tolower(val)
            next
        }
        $1 == "deb" {
            line = $0; sub(/^deb[ \t]+/, "", line)
            if (line ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "", line)
            split(line, w, /[ \t]+/); emit(w[1], w[2])
        }
        END {
            if (deb822) stanza_end()
            if (exact) print exact; else if (any) print any; else print "http://deb.debian.org/debian"
        }' "${files[@]}"
}

# --------------------------------------------------------------- test image
verify_test_image() {
    local t=$EPOCHREALTIME rc out
    set +e
    out=$(podman run --rm "$TEST_IMAGE" sh -c 'echo hi; exit 3' 2>&1); rc=$?
    set -e
    [ "$rc" = 3 ] && [ "$out" = hi ] || die "test image: expected 'hi' + exit 3, got rc=$rc out=$out"
    podman run --rm "$TEST_IMAGE" sh -c 'dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null' \
        || die "test image: dd bs=200M failed"
    set +e
    podman run --rm --memory 16m "$TEST_IMAGE" dd if=/dev/zero of=/dev/null bs=200M count=1 >/dev/null 2>&1; rc=$?
    set -e
    [ "$rc" = 137 ] || die "test image: dd bs=200M with --memory 16m gave rc=$rc, expected 137 (OOM kill)"
    say "  verified $TEST_IMAGE: exit 3 ok, dd 200M ok, dd 200M in 16m -> 137 ($(elapsed "$t"))"
}

build_test_image() {
    local t=$EPOCHREALTIME t1 d=$WORK/bb a
    if [ "$FORCE" != 1 ] && image_exists "$TEST_IMAGE"; then
        say "$TEST_IMAGE exists, skipped (FORCE=1 to rebuild)"; return
    fi
    local old_id; old_id=$(image_id "$TEST_IMAGE")
    mkdir -p "$d/rootfs"
    ensure_candidate busybox-static
    t1=$EPOCHREALTIME
    # Sandbox::User=root: the _apt user cannot write into our root-owned temp dir
    (cd "$d" && apt-get -q -o APT::Sandbox::User=root download busybox-static >>"$LOG" 2>&1) \
        || die "apt-get download busybox-static failed"
    dpkg-deb -x "$d"/busybox-static_*.deb "$d/x"
    say "  busybox-static downloaded and extracted: $(elapsed "$t1")"
    local r=$d/rootfs bb=$d/x/bin/busybox
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,var/tmp}
    chmod 1777 "$r/tmp" "$r/var/tmp"
    cp "$bb" "$r/bin/busybox"
    # all applets, each where busybox wants it (bin/sh, usr/bin/head, sbin/ifconfig ...)
    "$bb" --list-full | (cd "$r" && while read -r a; do
        [ -e "$a" ] || [ -L "$a" ] || ln -s /bin/busybox "$a"
    done)
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$r" -cf "$d/rootfs.tar" .
    t1=$EPOCHREALTIME
    podman import -q --change 'CMD ["/bin/sh"]' --change "ENV $ENV_PATH" \
        "$d/rootfs.tar" "$TEST_IMAGE" >>"$LOG" 2>&1 || die "podman import failed"
    say "  podman import: $(elapsed "$t1") ($("$bb" --list-full | wc -l) applets)"
    drop_old "$old_id" "$TEST_IMAGE"
    verify_test_image
    say "$TEST_IMAGE built in $(elapsed "$t")"
}

# ------------------------------------------------------------- python image
verify_py_image() {
    local t=$EPOCHREALTIME out
    out=$(podman run --rm "$PY_IMAGE" python3 -c \
        'import sys, json, ssl, sqlite3, subprocess; print(sys.version.split()[0])' 2>&1) \
        || die "python image: python3 failed: $out"
    say "  verified $PY_IMAGE: python $out ($(elapsed "$t"))"
}

import_py_tar() {  # import_py_tar FILE|-
    podman import -q --change 'CMD ["/usr/bin/python3"]' --change "ENV $ENV_PATH" \
        "$1" "$PY_IMAGE" >>"$LOG" 2>&1
}

build_py_image() {
    local t=$EPOCHREALTIME t1 mirror
    if [ "$FORCE" != 1 ] && image_exists "$PY_IMAGE"; then
        say "$PY_IMAGE exists, skipped (FORCE=1 to rebuild)"; return
    fi
    local old_id; old_id=$(image_id "$PY_IMAGE")
    # Fast path: a rootfs tarball made by an earlier run (import only, ~3 s)
    if [ "$FORCE" != 1 ] && [ -s "$PY_CACHE_TAR" ]; then
        import_py_tar "$PY_CACHE_TAR" || die "podman import of $PY_CACHE_TAR failed"
        say "  imported cached rootfs $PY_CACHE_TAR: $(elapsed "$t")"
        drop_old "$old_id" "$PY_IMAGE"
        verify_py_image
        say "$PY_IMAGE built from cache in $(elapsed "$t")"
        return
    fi
    if ! command -v mmdebstrap >/dev/null; then
        ensure_candidate mmdebstrap
        t1=$EPOCHREALTIME
        apt-get install -y -q --no-install-recommends mmdebstrap >>"$LOG" 2>&1 \
            || die "apt-get install mmdebstrap failed"
        say "  apt-get install mmdebstrap: $(elapsed "$t1")"
    fi
    mirror=${MIRROR:-$(detect_mirror)}
    mkdir -p "$CACHE_DIR"
    t1=$EPOCHREALTIME
    # minbase + python3; docs/man/locale/info removed by a hook (216 -> 169 MB).
    # (dpkg --path-exclude gives the same result but costs 5-7 s more.)
    # The tar streams into podman import and, through tee, into the cache.
    mmdebstrap -q --variant=minbase --include=python3 \
        --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/* "$1"/usr/share/info/*' \
        "$SUITE" - "$mirror" 2>>"$LOG" \
        | tee "$PY_CACHE_TAR.tmp" | import_py_tar - \
        || { rm -f "$PY_CACHE_TAR.tmp"; die "mmdebstrap | podman import failed"; }
    mv "$PY_CACHE_TAR.tmp" "$PY_CACHE_TAR"
    drop_old "$old_id" "$PY_IMAGE"
    say "  mmdebstrap ($SUITE from $mirror) | podman import: $(elapsed "$t1"), rootfs cached in $PY_CACHE_TAR"
    verify_py_image
    say "$PY_IMAGE built in $(elapsed "$t")"
}

# ------------------------------------------------------------ demo SQL job image
build_sql_image() {
    local t=$EPOCHREALTIME
    cp "$REPO/src/jobgraph/jobs/sql.py" "$WORK/sql.py"
    cat >"$WORK/Containerfile" <<CONTAINERFILE
FROM $PY_IMAGE
COPY sql.py /app/sql.py
WORKDIR /data
ENTRYPOINT ["python3", "/app/sql.py", "--database=/data/results.db"]
CONTAINERFILE
    podman build -q -t "$SQL_IMAGE" "$WORK" >>"$LOG" 2>&1 || die "podman build of $SQL_IMAGE failed"
    say "$SQL_IMAGE built in $(elapsed "$t")"
}

case "$ONLY" in
    all) build_test_image; build_py_image; build_sql_image ;;
    test) build_test_image ;;
    python) build_py_image ;;
    sql) build_py_image; build_sql_image ;;
    *) die "ONLY must be all, test, python or sql" ;;
esac
say "done in $(elapsed "$t_start")"
