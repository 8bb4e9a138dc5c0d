#!/bin/sh
# Build Strife's image from deploy/Containerfile.
#
#   deploy/image/build.sh [--tag IMAGE] [--extras loadgen] [--offline]
#
# Default: buildah (or podman, or docker) pulls the Python base image from its
# registry. --offline needs no registry: it makes a Debian bookworm root
# filesystem with debootstrap (python3 and venv from the Debian mirror),
# imports it as the base image, collects every wheel the project needs with
# this machine's pip (pinned by requirements.lock or constraints.txt when the
# repository has one), and builds the same Containerfile on that base with
# chroot isolation and no index. Run it as root from anywhere in the checkout;
# STRIFE_IMAGE_WORK (default .strife/image) keeps the root filesystem and the
# wheels between runs; PYTHON (default .venv/bin/python) is the pip that
# collects them. deploy/image/verify.sh then checks the result.
set -eu

tag=localhost/strife:dev
offline=0
extras=
while [ $# -gt 0 ]; do
    case $1 in
        --tag) tag=$2; shift 2 ;;
        --offline) offline=1; shift ;;
        --extras) extras=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)

if [ "$offline" = 0 ]; then
    for tool in buildah podman docker; do
        if command -v "$tool" >/dev/null; then
            case $tool in
                buildah) set -- buildah build --format docker ;;
                *) set -- "$tool" build ;;
            esac
            exec "$@" --build-arg "VERSION=$version" --build-arg "EXTRAS=$extras" \
                -f deploy/Containerfile -t "$tag" .
        fi
    done
    echo "no buildah, podman or docker" >&2
    exit 1
fi

work=${STRIFE_IMAGE_WORK:-.strife/image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=localhost/strife-base:bookworm
python=${PYTHON:-python3}
[ -n "${PYTHON:-}" ] || [ ! -x .venv/bin/python ] || python=.venv/bin/python
mkdir -p "$work/wheels"

if ! podman image exists "$base"; then
    if [ ! -x "$work/rootfs/usr/bin/python3" ]; then
        rm -rf "$work/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$work/rootfs" "$mirror"
        rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    fi
    tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base"
fi

# The wheels must suit the base's Python (bookworm: 3.11) and glibc (2.36).
"$python" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"--offline collects wheels for the base's Python 3.11; this is {sys.version}")
PY
project=.${extras:+[$extras]}
if [ -f requirements.lock ]; then
    "$python" -m pip wheel --quiet --wheel-dir "$work/wheels" -r requirements.lock
elif [ -f constraints.txt ]; then
    "$python" -m pip wheel --quiet --wheel-dir "$work/wheels" -c constraints.txt "$project"
else
    "$python" -m pip wheel --quiet --wheel-dir "$work/wheels" "$project"
fi
"$python" -m pip download --quiet --dest "$work/wheels" "setuptools>=77" wheel

buildah build --isolation chroot --format docker \
    --build-arg "BASE=$base" --build-arg "VERSION=$version" --build-arg "EXTRAS=$extras" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
    --volume "$(realpath "$work/wheels"):/wheels:ro" \
    -f deploy/Containerfile -t "$tag" .
