#!/usr/bin/env bash
# Build an offline wheelhouse: osfl and every dependency as wheels in one folder, for sites (and
# servers) that have no access to a package index. Run it on a machine that has one, carry the
# folder over, and install there with
#
#   python3 -m venv /opt/osfl
#   /opt/osfl/bin/pip install --no-index --find-links WHEELHOUSE osfl            # a site
#   /opt/osfl/bin/pip install --no-index --find-links WHEELHOUSE 'osfl[server]'  # the server
#
# The target machine must match what the wheels were built for: by default this machine's Python
# version and platform. For another target, give --python-version and --platform (binary wheels
# only, e.g. --platform win_amd64 --python-version 3.11 for a Windows site). pip evaluates
# dependency markers for this machine, not the target: for Windows add what Windows alone needs,
#   packaging/build-wheelhouse.sh --platform win_amd64 --python-version 3.11 -- colorama
set -euo pipefail

usage() {
    cat <<'EOF'
usage: packaging/build-wheelhouse.sh [--out DIR] [--server] [--python-version X.Y] [--platform TAG]...
                                     [--check] [-- PIP_ARGS...]

  --out DIR             where the wheels go (default: .wheels)
  --server              also the server extra (torch, diffusers, transformers, ...); several GB with a
                        CUDA build of torch. Without it: the site (edge client) only, no torch.
  --python-version X.Y  build for this Python version instead of this machine's (needs --platform)
  --platform TAG        build for this platform tag (repeatable), e.g. manylinux_2_28_x86_64, win_amd64,
                        macosx_11_0_arm64; implies binary wheels only
  --check               afterwards, install from the wheelhouse alone (--no-index) into a throw-away
                        venv and import it (same platform only)
  -- PIP_ARGS...        passed to pip download: options (e.g. --extra-index-url for a CPU-only torch
                        index) or more requirements (colorama for a Windows target)

Environment: PYTHON (default python3) runs pip.
EOF
}

PYTHON=${PYTHON:-python3}
OUT=.wheels
EXTRA=""
PYVER=""
PLATFORMS=()
CHECK=0
PIP_ARGS=()

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --server) EXTRA="[server]"; shift ;;
        --python-version) PYVER=${2:?--python-version needs X.Y}; shift 2 ;;
        --platform) PLATFORMS+=("${2:?--platform needs a tag}"); shift 2 ;;
        --check) CHECK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; PIP_ARGS=("$@"); break ;;
        *) echo "build-wheelhouse: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

if [ -n "$PYVER" ] && [ ${#PLATFORMS[@]} -eq 0 ]; then
    echo "build-wheelhouse: --python-version needs --platform too (pip cannot guess the target)" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PIP=("$PYTHON" -m pip --disable-pip-version-check)

# 1. osfl itself: a pure-Python wheel, the same for every platform.
echo "== building the osfl wheel from $ROOT"
"${PIP[@]}" wheel --no-deps --wheel-dir "$OUT" "$ROOT"
WHEEL=$(ls -t "$OUT"/osfl-*.whl | head -n 1)
echo "   $WHEEL"

# 2. Its dependencies, as binary wheels where the target is another platform. A direct file
#    reference makes pip take this wheel, never a same-named project from the index.
TARGET=()
if [ ${#PLATFORMS[@]} -gt 0 ]; then
    TARGET+=(--only-binary=:all:)
    for p in "${PLATFORMS[@]}"; do TARGET+=(--platform "$p"); done
    [ -n "$PYVER" ] && TARGET+=(--python-version "$PYVER" --implementation cp)
fi
echo "== downloading the dependencies of osfl$EXTRA into $OUT"
"${PIP[@]}" download --dest "$OUT" ${TARGET[@]+"${TARGET[@]}"} ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} \
    "osfl$EXTRA @ file://$WHEEL"

# 3. Anything that came as a source distribution becomes a wheel here, so the target needs no
#    compiler (only possible for this machine's own platform).
shopt -s nullglob
SDISTS=("$OUT"/*.tar.gz "$OUT"/*.zip)
if [ ${#SDISTS[@]} -gt 0 ]; then
    if [ ${#PLATFORMS[@]} -gt 0 ]; then
        echo "build-wheelhouse: source distributions in a cross-platform wheelhouse: ${SDISTS[*]}" >&2
        exit 1
    fi
    echo "== building wheels from ${#SDISTS[@]} source distribution(s)"
    "${PIP[@]}" wheel --no-deps --wheel-dir "$OUT" "${SDISTS[@]}"
    rm -f "${SDISTS[@]}"
fi

COUNT=$(ls "$OUT"/*.whl | wc -l)
SIZE=$(du -sh "$OUT" | cut -f1)
echo "== $COUNT wheels, $SIZE in $OUT"

if [ "$CHECK" = 1 ]; then
    if [ ${#PLATFORMS[@]} -gt 0 ]; then
        echo "build-wheelhouse: --check needs a wheelhouse for this machine's own platform" >&2
        exit 2
    fi
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    echo "== checking: offline install into a throw-away venv"
    "$PYTHON" -m venv "$TMP/venv"
    # PIP_CONFIG_FILE=/dev/null: no find-links or extra index from this machine's pip config.
    PIP_CONFIG_FILE=/dev/null "$TMP/venv/bin/python" -m pip install --disable-pip-version-check -q \
        --no-index --find-links "$OUT" "osfl$EXTRA"
    "$TMP/venv/bin/python" -c "import protocol, edge_client"
    echo "   ok: osfl$EXTRA installs from $OUT with --no-index"
fi

cat <<EOF

Install on the offline machine (same Python version and platform as built for):
  python3 -m venv /opt/osfl
  /opt/osfl/bin/pip install --no-index --find-links $(basename "$OUT") 'osfl$EXTRA'
EOF
