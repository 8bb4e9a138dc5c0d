#!/bin/sh
# Check a built image as far as a machine that cannot run containers allows.
#
#   deploy/image/verify.sh [IMAGE]        (as root; default localhost/strife:dev)
#
# 1. Its configuration: non-root user, SIGTERM, the health check, ports.
# 2. Its filesystem, mounted with buildah and entered with chroot as the
#    image's user (10001) and environment: every console script answers
#    --help; a balancer started from the image's own files, with identities
#    the image's strife-certs issued, answers SERVING on its health port to
#    the image's HEALTHCHECK command, and on SIGTERM stops with status 0.
# `podman run` itself is tried last and its outcome reported, not required.
set -eu

image=${1:-localhost/strife:dev}
port=${STRIFE_VERIFY_PORT:-17400}
health=$((port + 1))
fail() { echo "FAIL: $*" >&2; exit 1; }

config=$(podman image inspect "$image" --format \
    '{{.Config.User}}|{{.Config.StopSignal}}|{{.Config.ExposedPorts}}|{{.Config.Env}}')
echo "config: $config"
case $config in 10001:10001\|SIGTERM\|*7400/tcp*7401/tcp*7402/tcp*) ;; *) fail "config" ;; esac
check=$(podman image inspect "$image" --format '{{.HealthCheck.Test}}' 2>/dev/null \
    || podman image inspect "$image" --format '{{.Config.Healthcheck.Test}}')
echo "healthcheck: $check"
case $check in *strife.deploy.probe*) ;; *) fail "no HEALTHCHECK" ;; esac

ctr=$(buildah from --pull-never "$image")
root=$(buildah mount "$ctr")
pid=
cleanup() {
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# As the image runs it: its user, its environment, its working directory.
env_of_image=$(podman image inspect "$image" --format '{{range .Config.Env}}{{.}} {{end}}')
in_image() {
    # shellcheck disable=SC2086
    chroot --userspec=10001:10001 "$root" /usr/bin/env -i --chdir=/var/lib/strife \
        $env_of_image HOME=/var/lib/strife "$@"
}

for script in strife strife-bank strife-gateway strife-balancer strife-certs strife-loadgen; do
    if [ "$script" = strife-loadgen ] && ! in_image python -c "import rich" 2>/dev/null; then
        echo "entry point: $script needs the loadgen extra (build.sh --extras loadgen)"
        continue
    fi
    in_image "$script" --help >/dev/null || fail "$script --help"
    echo "entry point: $script --help ok"
done

mkdir -p "$root/tmp/verify" && chown 10001:10001 "$root/tmp/verify"
in_image strife-certs dev --out /tmp/verify/certs >/dev/null || fail "strife-certs dev"
echo "strife-certs dev: identities issued inside the image"

# Not through in_image: a function in the background is a subshell, and $!
# must be the server itself (chroot and env exec into it) for SIGTERM to reach it.
# shellcheck disable=SC2086
chroot --userspec=10001:10001 "$root" /usr/bin/env -i --chdir=/var/lib/strife \
    $env_of_image HOME=/var/lib/strife \
    strife-balancer --certs /tmp/verify/certs/balancer --listen "127.0.0.1:$port" \
    --health-listen "127.0.0.1:$health" >"$root/tmp/verify/balancer.log" 2>&1 &
pid=$!
i=0
until in_image python -m strife.deploy.probe "127.0.0.1:$health" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 60 ] || { cat "$root/tmp/verify/balancer.log" >&2; fail "never SERVING"; }
    kill -0 "$pid" 2>/dev/null || { cat "$root/tmp/verify/balancer.log" >&2; fail "exited"; }
    sleep 0.5
done
in_image python -m strife.deploy.probe "127.0.0.1:$health" strife.v1.LoadBalancer
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[ "$status" = 0 ] || { cat "$root/tmp/verify/balancer.log" >&2; fail "SIGTERM exit $status"; }
grep -q server_stopped "$root/tmp/verify/balancer.log" || fail "no graceful stop logged"
echo "balancer from the image: SERVING, then SIGTERM -> graceful stop, exit 0"
rm -rf "$root/tmp/verify"

if out=$(timeout 60 podman run --rm "$image" strife --help 2>&1); then
    echo "podman run: ok"
else
    echo "podman run: fails on this machine (expected): $(echo "$out" | tail -n 1)"
fi
echo "verified: $image"
