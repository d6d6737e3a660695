#!/usr/bin/env bash
# Builds bramble-leader, bramble-agent and bramble as static binaries for aarch64 and armv7
# (musl), runs bramble-proto's unit tests for both under qemu-user, and prints the sizes. For the
# armv7 userland: the image unpack tests and `bramble-agent check` under qemu-arm. (Both builds'
# agents also run on emulated boards, arm64 and armhf, in scripts/test-boards.)
#   cross/build.sh            release binaries in target/<triple>/release/
#   CROSS_PROFILE=dev cross/build.sh   faster, unoptimised
set -euo pipefail
cd "$(dirname "$0")/.."
cross/setup.sh
profile=${CROSS_PROFILE:-release}
jobs=${CARGO_BUILD_JOBS:-2}

# libcontainer 0.7 does not compile for 32-bit ARM: tty.rs passes a 64-bit DEVPTS_SUPER_MAGIC to
# nix's FsType, which is 32-bit there. We patch a copy at build time (never committing one) and
# point cargo at it for the armv7 build only; Cargo.lock is restored afterwards.
lc_version=$(awk '/^name = "libcontainer"$/{getline; gsub(/"/, "", $3); print $3}' Cargo.lock)
lc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"libcontainer-$lc_version" 2>/dev/null | head -1 || true)
if [ -z "$lc_src" ]; then
  cargo fetch --locked >/dev/null
  lc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"libcontainer-$lc_version" | head -1)
fi
lc_patched=target/cross-patches/libcontainer-$lc_version
rm -rf "$lc_patched" && mkdir -p target/cross-patches && cp -r "$lc_src" "$lc_patched"
sed -i 's/FsType(DEVPTS_SUPER_MAGIC)/FsType(DEVPTS_SUPER_MAGIC as _)/' "$lc_patched/src/tty.rs"
[ "$(grep -c 'FsType(DEVPTS_SUPER_MAGIC as _)' "$lc_patched/src/tty.rs")" -eq 2 ] || { echo "cross/build.sh: the libcontainer patch no longer applies" >&2; exit 1; }
cp Cargo.lock target/cross-patches/Cargo.lock.orig
trap 'cp target/cross-patches/Cargo.lock.orig Cargo.lock' EXIT
patch_for() {
  if [ "$1" = armv7-unknown-linux-musleabihf ]; then
    echo "--config=patch.crates-io.libcontainer.path=\"$lc_patched\""
  fi
}

for t in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  echo "== $t: unit tests of bramble-proto under qemu"
  cargo test --config cross/config.toml --target "$t" -j "$jobs" -p bramble-proto --lib
  echo "== $t: binaries ($profile)"
  # shellcheck disable=SC2046
  cargo build --config cross/config.toml $(patch_for "$t") --target "$t" -j "$jobs" --profile "$profile" \
    -p bramble-leader -p bramble-agent -p bramble-cli --bins
done
dir() { [ "$profile" = dev ] && echo debug || echo "$profile"; }

echo "== armv7-unknown-linux-musleabihf: the image unpack tests under qemu-arm"
cargo test --config cross/config.toml --target armv7-unknown-linux-musleabihf -j "$jobs" -p bramble-images --lib unpack
if [ "$(id -u)" -eq 0 ]; then
  echo "== armv7-unknown-linux-musleabihf: bramble-agent check under qemu-arm (this machine's kernel)"
  # qemu-user refuses to install seccomp filters (they would filter qemu itself), so the check
  # says seccomp is MISSING and exits 2 here; on a real armv7 kernel it does not (test-boards).
  check_dir=$(mktemp -d)
  status=0
  qemu-arm-static "target/armv7-unknown-linux-musleabihf/$(dir)/bramble-agent" check --data-dir "$check_dir/agent" \
    > "$check_dir/out" || status=$?
  sed -n '/^# this board:/,$p' "$check_dir/out"
  rm -rf "$check_dir"
  [ "$status" -eq 0 ] || [ "$status" -eq 2 ] || { echo "bramble-agent check failed under qemu-arm ($status)" >&2; exit 1; }
fi
printf '%-34s %14s %14s %14s %14s\n' target bramble-leader bramble-agent bramble-shim bramble
for t in x86_64 aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  d=target/$t/$(dir)
  [ "$t" = x86_64 ] && d=target/$(dir)
  sizes=()
  for b in bramble-leader bramble-agent bramble-shim bramble; do
    if [ -f "$d/$b" ]; then sizes+=("$(stat -c %s "$d/$b")"); else sizes+=("-"); fi
  done
  printf '%-34s %14s %14s %14s %14s\n' "$t" "${sizes[@]}"
done
for t in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  file "target/$t/$(dir)/bramble-agent" 2>/dev/null | sed 's/, BuildID[^,]*//' || true
  runner=$([ "$t" = aarch64-unknown-linux-musl ] && echo qemu-aarch64-static || echo qemu-arm-static)
  echo "$t: $($runner "target/$t/$(dir)/bramble-agent" --version)"
done
