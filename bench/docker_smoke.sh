#!/usr/bin/env bash
# Build the image, run it, and check what the README promises of it; prints a table of figures.
# Run on purpose (needs a Docker daemon, a few minutes and ~1 GB of disk), never from CI:
#   bash bench/docker_smoke.sh                       # base image python:3.11-slim from Docker Hub
#   PYTHON_IMAGE=local/python:3.11-bookworm bash bench/docker_smoke.sh
# Where Docker Hub is out of reach, a Debian base with Python can be made locally (as root):
#   debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
#       bookworm /tmp/rootfs http://deb.debian.org/debian
#   tar -C /tmp/rootfs -c . | docker import -c 'ENV LANG=C.UTF-8' - local/python:3.11-bookworm
# (behind a TLS-intercepting proxy, copy the host's CA bundle into /tmp/rootfs/etc/ssl/certs first).
set -euo pipefail
cd "$(dirname "$0")/.."

image=evidence-triage-smoke
name=evidence-triage-smoke
volume=evidence-triage-smoke-data
port=${PORT:-18000}
build_args=()
if [[ -n "${PYTHON_IMAGE:-}" ]]; then
    build_args=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
fi

cleanup() {
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker volume rm "$volume" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

fail() {
    echo "FAILED: $*" >&2
    docker logs "$name" 2>&1 | tail -20 >&2 || true
    exit 1
}

# Seconds until `curl` gets a 200 from $1, or fail after $2 seconds.
wait_for() {
    local url=$1 limit=$2 start=$SECONDS
    until curl -fsS "$url" >/dev/null 2>&1; do
        ((SECONDS - start < limit)) || fail "$url not answering after ${limit}s"
        sleep 0.5
    done
    echo $((SECONDS - start))
}

start=$SECONDS
docker build "${build_args[@]}" -t "$image" . >/tmp/docker_smoke_build.log 2>&1 ||
    fail "build (log: /tmp/docker_smoke_build.log)"
build_seconds=$((SECONDS - start))
size=$(docker image inspect "$image" --format '{{.Size}}')

docker run -d --name "$name" -p "$port:8000" -v "$volume:/data" "$image" >/dev/null
ready_seconds=$(wait_for "http://127.0.0.1:$port/readyz" 120)
model=$(curl -fsS "http://127.0.0.1:$port/readyz" | python3 -c 'import json, sys; print(json.load(sys.stdin)["model_version"])')
user=$(docker exec "$name" whoami)
[[ "$user" != root ]] || fail "the service runs as root"
docker exec "$name" python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" ||
    fail "torch is installed in the runtime image"
demo=$(docker exec "$name" triage demo 2>&1 | sed -n '/^Created/p')
reviewer_key=$(docker exec "$name" triage keys create --role reviewer | grep -o 'trk_[A-Za-z0-9_-]*' | head -1)
claims_before=$(curl -fsS -H "Authorization: Bearer $reviewer_key" "http://127.0.0.1:$port/v1/claims?limit=1" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["count"])')

docker restart "$name" >/dev/null
restart_seconds=$(wait_for "http://127.0.0.1:$port/readyz" 120)
claims_after=$(curl -fsS -H "Authorization: Bearer $reviewer_key" "http://127.0.0.1:$port/v1/claims?limit=1" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["count"])')
[[ "$claims_before" == "$claims_after" ]] || fail "claims before restart $claims_before, after $claims_after"

health=starting
for _ in $(seq 1 90); do
    health=$(docker inspect "$name" --format '{{.State.Health.Status}}')
    [[ "$health" == starting ]] || break
    sleep 1
done
[[ "$health" == healthy ]] || fail "health check says $health"

printf '| %-34s | %s |\n' "check" "result" "---" "---" \
    "base image" "${PYTHON_IMAGE:-python:3.11-slim}" \
    "build (s)" "$build_seconds" \
    "image size (MB)" "$((size / 1000000))" \
    "start to /readyz (s)" "$ready_seconds" \
    "model" "$model" \
    "runs as" "$user" \
    "torch in the image" "no" \
    "demo" "$demo" \
    "claims kept across a restart" "$claims_after of $claims_before" \
    "restart to /readyz (s)" "$restart_seconds" \
    "health check" "$health"
