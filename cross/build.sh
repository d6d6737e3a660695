#!/usr/bin/env bash
# Builds bramble-leader, bramble-agent and bramble as static binaries for aarch64 and armv7
# (musl), runs bramble-proto's unit tests for both under qemu-user, and prints the sizes.
#   cross/build.sh            release binaries in target/<triple>/release/
#   CROSS_PROFILE=dev cross/build.sh   faster, unoptimised
set -euo pipefail
cd "$(dirname "$0")/.."
cross/setup.sh
profile=${CROSS_PROFILE:-release}
jobs=${CARGO_BUILD_JOBS:-2}
for t in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  echo "== $t: unit tests of bramble-proto under qemu"
  cargo test --config cross/config.toml --target "$t" -j "$jobs" -p bramble-proto --lib
  echo "== $t: binaries ($profile)"
  cargo build --config cross/config.toml --target "$t" -j "$jobs" --profile "$profile" \
    -p bramble-leader -p bramble-agent -p bramble-cli --bins
done
dir() { [ "$profile" = dev ] && echo debug || echo "$profile"; }
printf '%-34s %12s %12s %12s\n' target bramble-leader bramble-agent bramble
for t in x86_64 aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  d=target/$t/$(dir)
  [ "$t" = x86_64 ] && d=target/$(dir)
  sizes=()
  for b in bramble-leader bramble-agent bramble; do
    if [ -f "$d/$b" ]; then sizes+=("$(stat -c %s "$d/$b")"); else sizes+=("-"); fi
  done
  printf '%-34s %12s %12s %12s\n' "$t" "${sizes[@]}"
done
for t in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  file "target/$t/$(dir)/bramble-agent" 2>/dev/null | sed 's/, BuildID[^,]*//' || true
  runner=$([ "$t" = aarch64-unknown-linux-musl ] && echo qemu-aarch64-static || echo qemu-arm-static)
  echo "$t: $($runner "target/$t/$(dir)/bramble-agent" --version)"
done
