#!/bin/sh
# Check a built image as far as a machine that cannot run containers allows.
#
#   deploy/image/verify.sh [IMAGE]        (as root; default localhost/strife:dev)
#
# 1. Its configuration: non-root user, SIGTERM, the health check, ports.
# 2. Its filesystem, mounted with buildah and entered with chroot as the
#    image's user (10001) and environment: every console script answers
#    --help; with identities the image's strife-certs issued, a balancer, two
#    banks and a gateway started from the image's files answer SERVING on
#    their health ports to the image's HEALTHCHECK command, the image's client
#    logs in and makes a payment, and on SIGTERM every server stops with 0.
# `podman run` itself is tried last and its outcome reported, not required.
set -eu
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

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
pids=
cleanup() {
    for entry in $pids; do kill -TERM "${entry#*=}" 2>/dev/null || true; done
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

# The certificate Job's command: imports without the render's dependencies
# and, outside a cluster, stops where it looks for the API server.
out=$(in_image python -m strife.deploy issue-secrets --identity bank/alpha 2>&1 || true)
case $out in
    *KUBERNETES_SERVICE_HOST*) echo "issue-secrets (the certificate Job): runs, needs the API" ;;
    *) echo "$out" >&2; fail "python -m strife.deploy issue-secrets" ;;
esac

mkdir -p "$root/tmp/verify" && chown 10001:10001 "$root/tmp/verify"
cp deploy/seed.json "$root/tmp/verify/seed.json"
in_image strife-certs dev --out /tmp/verify/certs --bank alpha --bank beta --gateway gw-1 \
    >/dev/null || fail "strife-certs dev"
echo "strife-certs dev: identities issued inside the image"

# A cluster from the image's files: balancer, banks alpha and beta, gateway
# gw-1, each started directly (not through a function: a function in the
# background is a subshell, and $! must be the server itself, which chroot
# and env exec into, for SIGTERM to reach it).
pids=
serve() {  # NAME PORT ARGS...: start a server, record its pid
    name=$1 at=$2
    shift 2
    # shellcheck disable=SC2086
    chroot --userspec=10001:10001 "$root" /usr/bin/env -i --chdir=/tmp/verify \
        $env_of_image HOME=/var/lib/strife \
        "$@" --listen "127.0.0.1:$at" --health-listen "127.0.0.1:$((at + 1))" \
        >"$root/tmp/verify/$name.log" 2>&1 &
    pids="$pids $name=$!"
}
ready() {  # NAME PORT SERVICE: wait for the health port to say SERVING
    i=0
    until in_image python -m strife.deploy.probe "127.0.0.1:$(($2 + 1))" "$3" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -lt 60 ] || { cat "$root/tmp/verify/$1.log" >&2; fail "$1 never SERVING"; }
        sleep 0.5
    done
    echo "$1 from the image: SERVING $3"
}
balancer=127.0.0.1:$port
serve balancer "$port" strife-balancer --certs certs/balancer
ready balancer "$port" strife.v1.LoadBalancer
serve alpha $((port + 10)) strife-bank --name alpha --data-dir data --init --seed seed.json \
    --certs certs/bank-alpha --balancer "$balancer"
serve beta $((port + 20)) strife-bank --name beta --data-dir data --init --seed seed.json \
    --certs certs/bank-beta --balancer "$balancer"
serve gw-1 $((port + 30)) strife-gateway --name gw-1 --db data/gw-1.db \
    --certs certs/gateway-gw-1 --balancer "$balancer"
ready alpha $((port + 10)) strife.v1.BankService
ready beta $((port + 20)) strife.v1.BankService
ready gw-1 $((port + 30)) strife.v1.PaymentGateway

# A payment through it, with the image's own client.
client="STRIFE_HOME=/tmp/verify/home"
i=0
until echo pw-alice | in_image env "$client" strife login -u alice --bank alpha \
    --balancer "$balancer" --certs /tmp/verify/certs/client-default --password-stdin \
    >"$root/tmp/verify/login.log" 2>&1; do
    # The gateway answers once it has found both banks through the balancer.
    i=$((i + 1))
    [ "$i" -lt 20 ] || { cat "$root/tmp/verify/login.log" >&2; fail "login"; }
    sleep 0.5
done
in_image env "$client" strife pay --to-bank beta --to-account bob-usd --amount 12.34 \
    --currency USD || fail "pay"
balance=$(in_image env "$client" strife balance) || fail "balance"
echo "$balance"
case $balance in *987.66*) ;; *) fail "alice's balance is not 987.66 after paying 12.34" ;; esac
echo "payment alice@alpha -> bob@beta from the image: COMMITTED, balance 987.66"

# SIGTERM: every server stops gracefully and exits 0.
for entry in $pids; do kill -TERM "${entry#*=}"; done
for entry in $pids; do
    status=0
    wait "${entry#*=}" || status=$?
    [ "$status" = 0 ] || { cat "$root/tmp/verify/${entry%%=*}.log" >&2; fail "${entry%%=*} exit $status"; }
    grep -q server_stopped "$root/tmp/verify/${entry%%=*}.log" || fail "${entry%%=*}: no graceful stop"
done
pids=
echo "SIGTERM: balancer, alpha, beta, gw-1 stopped gracefully, exit 0"
rm -rf "$root/tmp/verify"

if out=$(timeout 60 podman run --rm "$image" strife --help 2>&1); then
    echo "podman run: ok"
else
    echo "podman run: fails on this machine (expected): $(echo "$out" | tail -n 1)"
fi
echo "verified: $image"
