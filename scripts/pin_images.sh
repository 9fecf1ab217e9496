#!/usr/bin/env bash
# Pin the container images the shipped files name to their registry digests. Run it where the registry is
# reachable (it needs `crane` or `docker buildx`), review the diff, commit it:
#
#   scripts/pin_images.sh                        the Ray base image: Dockerfile's FROM, cluster/aws.yaml, gcp.yaml
#   scripts/pin_images.sh REGISTRY/gptray:TAG    also gptray's own image in cluster/kuberay/*.yaml (pushed first:
#                                                docker build -t REGISTRY/gptray:TAG . && docker push REGISTRY/gptray:TAG)
#
# Each reference becomes NAME:TAG@sha256:DIGEST (Docker, the Ray cluster launcher and Kubernetes then pull exactly
# that image, whatever the tag is moved to later); one already pinned gets the digest the tag has now. The digest
# is the one the registry serves for the tag (a multi-platform image's index), as
#   crane digest rayproject/ray:2.60.0-py311-gpu
#   docker buildx imagetools inspect rayproject/ray:2.60.0-py311-gpu     (its "Digest:" line)
# print it. PIN_ROOT names another checkout to edit (the tests run it on a copy).
set -euo pipefail
root=${PIN_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
gptray_image=${1:-}
digest_re='sha256:[0-9a-f]{64}'

digest_of() {  # the registry's digest of an image reference, checked to be one
  local ref=$1 digest
  if command -v crane >/dev/null 2>&1; then
    digest=$(crane digest "$ref")
  elif docker buildx version >/dev/null 2>&1; then
    digest=$(docker buildx imagetools inspect "$ref" | awk '$1 == "Digest:" {print $2; exit}')
  else
    echo "pin_images: neither crane nor docker buildx is installed; cannot ask the registry for $ref" >&2
    exit 1
  fi
  if ! [[ $digest =~ ^${digest_re}$ ]]; then
    echo "pin_images: the registry gave no digest for $ref (got '${digest}')" >&2
    exit 1
  fi
  echo "$digest"
}

pin() {  # pin(reference without digest, replacement, files...): on FROM and image: lines, NAME:TAG[@sha256:…] → it
  local ref=$1 replacement=$2
  shift 2
  local pattern
  pattern=$(printf '%s' "$ref" | sed 's#[]./*^$+?(){}|\[]#\\&#g')  # the reference as a literal ERE
  sed -E -i "/^(FROM[[:space:]]|[[:space:]]*image:[[:space:]])/ s/${pattern}(@${digest_re})?([[:space:]]|\$)/${replacement//\//\\/}\2/" "$@"
  for file in "$@"; do
    grep -qF "$replacement" "$file" || { echo "pin_images: $file names no image $ref" >&2; exit 1; }
  done
  echo "pin_images: $ref → $replacement in ${*#"$root"/}"
}

# The Ray base image is whatever the Dockerfile's FROM names (its tag follows the Ray and Python gptray pins).
base=$(awk '$1 == "FROM" {print $2; exit}' "$root/Dockerfile")
base=${base%@*}
digest=$(digest_of "$base")  # an assignment of its own, so that its failure stops the script (set -e)
pin "$base" "$base@$digest" "$root/Dockerfile" "$root/cluster/aws.yaml" "$root/cluster/gcp.yaml"

if [ -n "$gptray_image" ]; then
  gptray_image=${gptray_image%@*}
  digest=$(digest_of "$gptray_image")
  pin_to="$gptray_image@$digest"
  for manifest in "$root"/cluster/kuberay/*.yaml; do
    # whatever gptray image a manifest names now (gptray:TAG, or REGISTRY/gptray:TAG[@sha256:…]) becomes this one
    sed -E -i "/^[[:space:]]*image:/ s#(image:[[:space:]]+)[^[:space:]]*gptray:[^@[:space:]]+(@${digest_re})?#\1${pin_to}#" \
      "$manifest"
    grep -qF "$pin_to" "$manifest" || { echo "pin_images: $manifest names no gptray image" >&2; exit 1; }
  done
  echo "pin_images: gptray's image → $pin_to in cluster/kuberay/*.yaml"
fi
