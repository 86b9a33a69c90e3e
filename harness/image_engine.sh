#!/usr/bin/env bash
# The container engine the image tests (tests/image/) build and run the worker images with:
# podman on runc with cgroupfs, from Debian's packages, and a stand-in for the Dockerfiles' base
# image, made on this machine because no container registry can be reached from it.
#
#   harness/image_engine.sh prepare          install podman if missing, build the base stand-in if
#                                            missing (make test runs this)
#   harness/image_engine.sh base-name        print the base image the Dockerfiles name (one FROM)
#   harness/image_engine.sh cannot-install   print why podman cannot be installed here, if it cannot
#
# prepare exits 0 after one line saying why where podman cannot be installed (not root, or no
# apt-get): the image tests then skip with the same reason. Anything else that fails is an error.
# It looks at what is there (installed packages, the base image in podman's storage), not at a
# stamp file that a `podman system reset` would make a lie: once done, it takes 0.1 s.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# Every Dockerfile the image tests build; they must name one and the same base image.
DOCKERFILES=("$REPO/batch_celery_container/Dockerfile" "$REPO/examples/cpu-pool/Dockerfile")
PACKAGES=(podman runc catatonit mmdebstrap uidmap)
# The stand-in's packages: Debian's python3 and pip (the official image has both), CA
# certificates, and what the images' RUN steps and the lifecycle script call (ps, useradd).
BASE_PACKAGES=python3,python3-pip,python3-venv,ca-certificates,procps,passwd
LOG="${TMPDIR:-/tmp}/batch-celery-image-engine.log"

say() { printf 'image engine: %s\n' "$*"; }

# The one base image the Dockerfiles name, fully qualified (docker.io/library/...), as podman
# resolves the short name.
base_name() {
    local names name
    names="$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "${DOCKERFILES[@]}" | sort -u)"
    if [[ "$(wc -l <<<"$names")" != 1 || -z "$names" ]]; then
        say "the image tests' Dockerfiles must name one base image; they name: $(tr '\n' ' ' <<<"$names")" >&2
        return 1
    fi
    name="$names"
    [[ "$name" == */* ]] || name="library/$name"
    [[ "${name%%/*}" == *.* ]] || name="docker.io/$name"
    echo "$name"
}

# Why the engine cannot be prepared here, or nothing when it can (or need not be).
cannot_install() {
    if [[ "$(id -u)" != 0 ]]; then
        echo "not root: the image tests run podman as root, and installing it needs root (apt-get install ${PACKAGES[*]})"
    elif ! command -v podman >/dev/null && ! command -v apt-get >/dev/null; then
        echo "podman is not installed and there is no apt-get to install it with (needs: ${PACKAGES[*]})"
    fi
}

install_engine() {
    local missing=() package
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    (( ${#missing[@]} )) || return 0
    say "installing ${missing[*]} (apt-get, log: $LOG)"
    # A fresh machine has no package lists yet; another apt run may hold the lock for a while.
    if ! { apt-get update -qq -o DPkg::Lock::Timeout=120 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o DPkg::Lock::Timeout=120 "${missing[@]}"; } >>"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        say "apt-get could not install ${missing[*]} (see above)" >&2
        return 1
    fi
}

# The official image is Debian with Python under /usr/local; the stand-in is Debian's own python3
# made to look the same to a Dockerfile: pip installs system-wide, `python` and `pip` on PATH, and
# this machine's CA bundle, through which pip reaches the package index (a TLS proxy here).
build_base() {
    local name="$1" suite work
    suite="${name##*-}"
    if [[ "$name" != docker.io/library/python:* || "$suite" != bookworm ]]; then
        say "cannot make a stand-in for $name: only docker.io/library/python:*-bookworm (Debian 12, like this machine)" >&2
        return 1
    fi
    if podman image exists "$name"; then
        return 0
    fi
    say "building a stand-in for $name (mmdebstrap + podman import; log: $LOG)"
    work="$(mktemp -d "${TMPDIR:-/tmp}/batch-celery-base.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: the trap must remove this folder
    trap "rm -rf '$work'" RETURN
    # The hooks' "$1" is the new root filesystem, which mmdebstrap passes them.
    # shellcheck disable=SC2016
    if ! mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
            --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
            --customize-hook='ln -sf /usr/bin/python3 "$1/usr/local/bin/python"' \
            --customize-hook='ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"' \
            --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"' \
            "$suite" "$work/rootfs.tar" </dev/null >>"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        say "mmdebstrap could not build the base image's root filesystem (see above)" >&2
        return 1
    fi
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        "$work/rootfs.tar" "$name" >>"$LOG"
}

prepare() {
    local reason
    reason="$(cannot_install)"
    if [[ -n "$reason" ]]; then
        say "$reason; the image tests will be skipped"
        return 0
    fi
    install_engine
    build_base "$(base_name)"
}

case "${1:-}" in
    prepare) prepare ;;
    base-name) base_name ;;
    cannot-install) cannot_install ;;
    *) echo "usage: $0 prepare | base-name | cannot-install" >&2; exit 2 ;;
esac
