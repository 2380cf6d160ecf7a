#!/usr/bin/env bash
# setup-podman.sh - install and configure rootful Podman on a Debian 12 (bookworm)
# machine without systemd (run as root). Idempotent: a second run does nothing
# but verify.
#
# What is needed here and why (see NOTES.md):
#   podman  (pulls conmon, crun, CNI plugins, iptables, containers-common)
#   runc    crun 1.8.1 refuses this host's hybrid cgroup v1/v2 layout:
#           "crun: cgroups in hybrid mode not supported, drop all controllers from cgroupv2"
#   containers.conf:
#     [containers] default_ulimits = []   the process lacks CAP_SYS_RESOURCE, so the
#           rlimits podman sets by default (nofile=1048576 ...) cannot be applied:
#           "error setting rlimits for ready process: error setting rlimit type 7: operation not permitted"
#     [engine] runtime = "runc"
#   catatonit  the pause binary of a pod's infra container: `podman kube play` (the Kubernetes
#           runner's pod test) fails without it: 'finding pause binary: exec: "catatonit"'
#   uidmap is NOT needed (rootful only).
#   curl is needed by podman-service.sh (installed only if missing).
set -euo pipefail

CONF=${SETUP_PODMAN_CONF:-/etc/containers/containers.conf}
LOG=${SETUP_PODMAN_LOG:-/tmp/setup-podman.apt.log}
export DEBIAN_FRONTEND=noninteractive

t_start=$EPOCHREALTIME
say() { printf '[setup-podman] %s\n' "$*"; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2fs", b-a}'; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- packages
pkgs=(podman runc catatonit)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

apt_update() {
    local t=$EPOCHREALTIME
    apt-get update -q >>"$LOG" 2>&1 || { tail -20 "$LOG"; die "apt-get update failed (log: $LOG)"; }
    say "apt-get update: $(elapsed "$t")"
}

if [ ${#missing[@]} -gt 0 ]; then
    : >"$LOG"
    # apt-get update only if some package has no install candidate (empty/stale lists)
    need_update=0
    for p in "${missing[@]}"; do
        cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/{print $2}')
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
    done
    [ $need_update = 1 ] && apt_update
    t=$EPOCHREALTIME
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1; then
        # lists may be stale (404 on a superseded .deb): refresh once and retry
        if [ $need_update = 0 ]; then
            apt_update
            apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1 \
                || { tail -20 "$LOG"; die "apt-get install failed (log: $LOG)"; }
        else
            tail -20 "$LOG"; die "apt-get install failed (log: $LOG)"
        fi
    fi
    say "apt-get install ${missing[*]}: $(elapsed "$t")"
else
    say "packages already installed: ${pkgs[*]}"
fi

# ---------------------------------------------------------- containers.conf
# set_key SECTION KEY VALUE: set KEY = VALUE inside [SECTION] of $CONF, keeping
# every other line. Replaces an existing (uncommented) KEY, including a
# multi-line array value; adds the key under the section header, or appends
# the section if it does not exist.
set_key() {
    local section=$1 key=$2 value=$3 tmp
    tmp=$(mktemp "${CONF}.XXXXXX")
    awk -v sec="$section" -v key="$key" -v val="$value" '
        function flush_missing() { if (insec && !done) { print key " = " val; done = 1 } }
        skipping { if ($0 ~ /\]/) skipping = 0; next }
        /^[ \t]*\[[^\]]+\][ \t]*(#.*)?$/ {
            hdr = $0; gsub(/^[ \t]*\[|\][ \t]*(#.*)?$/, "", hdr)
            if (insec) flush_missing()
            insec = (hdr == sec); if (insec) seen = 1
            print; next
        }
        insec && !done && $0 ~ "^[ \t]*" key "[ \t]*=" {
            print key " = " val; done = 1
            rest = $0; sub(/^[^=]*=[ \t]*/, "", rest)
            if (rest ~ /^\[/ && rest !~ /\]/) skipping = 1
            next
        }
        { print }
        END {
            if (insec) flush_missing()
            if (!seen) { if (NR > 0) print ""; print "[" sec "]"; print key " = " val }
        }' "$CONF" >"$tmp"
    chmod 644 "$tmp"
    mv "$tmp" "$CONF"
}

t=$EPOCHREALTIME
mkdir -p /etc/containers
[ -f "$CONF" ] || : >"$CONF"
before=$(md5sum <"$CONF")
set_key containers default_ulimits '[]'
set_key engine runtime '"runc"'
if [ "$before" = "$(md5sum <"$CONF")" ]; then
    say "$CONF already configured: $(elapsed "$t")"
else
    say "$CONF written: $(elapsed "$t")"
fi

# ------------------------------------------------------------------- verify
t=$EPOCHREALTIME
info=$(podman info --format '{{.Version.Version}} runtime={{.Host.OCIRuntime.Name}} cgroup={{.Host.CgroupsVersion}}/{{.Host.CgroupManager}} storage={{.Store.GraphDriverName}}' 2>&1) \
    || { echo "$info"; die "podman info failed"; }
case "$info" in *runtime=runc*) ;; *) die "podman does not use runc: $info" ;; esac
say "podman $info (podman info: $(elapsed "$t"))"
say "done in $(elapsed "$t_start")"
