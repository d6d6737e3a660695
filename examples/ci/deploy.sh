#!/usr/bin/env bash
# One build-then-deploy pipeline step: build an image with a new tag, get it to the boards, show
# what would change, apply, and wait until the new version really serves. The exit code gates the
# pipeline: 0 deployed (or nothing to do), non-zero when any step failed or the rollout did not
# complete (Bramble rolls the app back by itself then).
#   examples/ci/deploy.sh TAG
# Environment:
#   BRAMBLE_CONFIG   the CLI config of the cluster (a deployer's, ideally)
#   REGISTRY         host:port of a registry the boards pull from (pushed to with skopeo);
#                    without it the image is imported into every board's store through the leader
#   TIMEOUT          how long the rollout may take (default 5m)
set -euo pipefail
tag=${1:?usage: examples/ci/deploy.sh TAG}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "--- build ci-hello:$tag"
PAGE="ci-hello $tag" "$here/../make-image.sh" "$work/image" >/dev/null

echo "--- publish"
if [ -n "${REGISTRY:-}" ]; then
  image="$REGISTRY/bramble/ci-hello:$tag"
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/image:1" "docker://$image"
else
  image="bramble.local/ci-hello:$tag"
  for node in $(bramble get nodes | awk 'NR > 1 && $2 == "Ready" { print $1 }'); do
    bramble image import --node "$node" --name "$image" "$work/image"
  done
fi
sed "s|\"IMAGE\"|\"$image\"|" "$here/app.toml" > "$work/app.toml"

echo "--- diff"
set +e
bramble diff -f "$work/app.toml"
changed=$?
set -e
case $changed in
  0) echo "nothing to deploy: the cluster already runs $image"; exit 0 ;;
  1) ;;
  *) echo "diff failed" >&2; exit "$changed" ;;
esac

echo "--- apply"
bramble apply -f "$work/app.toml"
echo "--- rollout"
bramble rollout status app/ci-hello --timeout "${TIMEOUT:-5m}"
