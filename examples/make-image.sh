#!/usr/bin/env bash
# Builds the example image, an OCI layout with a static busybox and a web page, with no internet:
#   examples/make-image.sh OUT_DIR [ARCH]
# ARCH is a Debian architecture (amd64, arm64, armhf; default: this machine's). The busybox comes
# from target/test-assets/busybox-ARCH if scripts/fetch-test-assets made it, else from the host's
# busybox-static package (/bin/busybox). The output is reproducible: same busybox, same digests.
# PAGE, if set, is the web page's text (a new version's build: examples/ci/deploy.sh).
set -euo pipefail
out=${1:?usage: examples/make-image.sh OUT_DIR [ARCH]}
arch=${2:-$(dpkg --print-architecture)}
here=$(cd "$(dirname "$0")/.." && pwd)
bb="$here/target/test-assets/busybox-$arch"
if [ ! -x "$bb" ]; then
  [ "$arch" = "$(dpkg --print-architecture)" ] || { echo "make-image: no busybox for $arch; run scripts/fetch-test-assets" >&2; exit 1; }
  bb=/bin/busybox
  [ -x "$bb" ] || { echo "make-image: /bin/busybox is missing: apt-get install busybox-static" >&2; exit 1; }
fi
case "$arch" in
  amd64) oci_arch=amd64 variant= ;;
  arm64) oci_arch=arm64 variant=v8 ;;
  armhf) oci_arch=arm variant=v7 ;;
  *) echo "make-image: unsupported architecture $arch" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/www" "$root/tmp"
install -m 0755 "$bb" "$root/bin/busybox"
for app in sh ash cat echo env httpd ls ps sleep wget true false hostname id; do
  ln -s busybox "$root/bin/$app"
done
printf 'root:x:0:0:root:/:/bin/sh\nwww:x:33:33:www:/www:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nwww:x:33:\n' > "$root/etc/group"
if [ -n "${PAGE:-}" ]; then
  printf '%s\n' "$PAGE" > "$root/www/index.html"
else
  cat > "$root/www/index.html" <<'HTML'
<!doctype html><title>hello from bramble</title><h1>Hello from a Bramble replica</h1>
HTML
fi
chmod 1777 "$root/tmp"

layer="$work/layer.tar"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$layer" .
gzip -n -9 -c "$layer" > "$layer.gz"
diff_id=$(sha256sum "$layer" | cut -d' ' -f1)

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
put() { # file -> prints "digest size", stores the blob
  local d; d=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$out/blobs/sha256/$d"
  echo "$d $(stat -c %s "$1")"
}
read -r layer_digest layer_size < <(put "$layer.gz")
variant_json=${variant:+,\"variant\":\"$variant\"}
printf '{"architecture":"%s","os":"linux"%s,"config":{"Env":["PATH=/bin"],"Cmd":["httpd","-f","-p","8080","-h","/www"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$oci_arch" "$variant_json" "$diff_id" > "$work/config.json"
read -r config_digest config_size < <(put "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
read -r manifest_digest manifest_size < <(put "$work/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"1"}}]}' \
  "$manifest_digest" "$manifest_size" > "$out/index.json"
echo "make-image: $out (linux/$oci_arch${variant:+/$variant}, manifest sha256:$manifest_digest)"
