#!/usr/bin/env bash
# Debian packages of Bramble for amd64, arm64 and armhf, made with dpkg-deb alone from the release
# binaries (target/release for amd64; cross/build.sh's target/<triple>/release for the others).
#   cross/deb.sh [amd64] [arm64] [armhf]   (default: every arch whose binaries are built)
# Writes target/deb/bramble_<version>_<arch>.deb (a board) and bramble-cli_<version>_<arch>.deb (the
# CLI alone) and lists what each holds.
#   CROSS_PROFILE=dev cross/deb.sh amd64   a package of the debug build (target/debug), written to
#                                          target/deb/dev/: what scripts/test-boards installs in a VM.
#
# One package per board: bramble-leader, bramble-agent, bramble-shim and bramble in /usr/bin, its
# shell completions (bash, zsh, fish) and man pages, the systemd units (enabled by nobody: the package never starts anything), config samples in
# /etc/bramble/, the data dirs, and a `bramble` system user and group that own /etc/bramble and
# may read the CLI config (the agent and leader run as root: namespaces, cgroups, mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
profile=${CROSS_PROFILE:-release}
case "$profile" in
  release) out=target/deb dir=release compress=(-Zxz) ;;
  dev) out=target/deb/dev dir=debug compress=(-Zgzip -z1) ;;
  *) echo "cross/deb.sh: CROSS_PROFILE is release or dev, not $profile" >&2; exit 2 ;;
esac
mkdir -p "$out"
# Reproducible: every file dated at the last commit (SOURCE_DATE_EPOCH, which dpkg-deb also uses
# for the archive's own dates), modes set explicitly, so the same binaries give the same package.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
umask 022

bins_of() {
  case "$1" in
    amd64) echo "target/$dir" ;;
    arm64) echo "target/aarch64-unknown-linux-musl/$dir" ;;
    armhf) echo "target/armv7-unknown-linux-musleabihf/$dir" ;;
    *) echo "cross/deb.sh: unknown arch $1 (amd64, arm64 or armhf)" >&2; exit 2 ;;
  esac
}
binaries=(bramble-leader bramble-agent bramble-shim bramble)

archs=("$@")
if [ ${#archs[@]} -eq 0 ]; then
  for a in amd64 arm64 armhf; do [ -x "$(bins_of "$a")/bramble-shim" ] && archs+=("$a"); done
fi
[ ${#archs[@]} -gt 0 ] || { echo "cross/deb.sh: no release binaries (cargo build --release; cross/build.sh)" >&2; exit 1; }

for arch in "${archs[@]}"; do
  bins=$(bins_of "$arch")
  for b in "${binaries[@]}"; do
    [ -x "$bins/$b" ] || { echo "cross/deb.sh: $bins/$b is missing (build it first)" >&2; exit 1; }
  done
  root=$out/root-$arch
  rm -rf "$root"
  mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/bramble" \
    "$root/usr/share/doc/bramble/examples"
  for b in "${binaries[@]}"; do install -m 0755 "$bins/$b" "$root/usr/bin/$b"; done
  # (A debug build's line tables are most of its size.)
  [ "$profile" = dev ] && strip --strip-debug "$root"/usr/bin/*
  for u in dist/systemd/*.service; do
    sed 's|/usr/local/bin/|/usr/bin/|g' "$u" > "$root/lib/systemd/system/$(basename "$u")"
  done
  # The etcd ordering is for HA leaders only: an example, not installed as a drop-in.
  cp dist/systemd/bramble-leader.service.d/*.conf "$root/usr/share/doc/bramble/examples/"
  install -m 0640 dist/agent.toml "$root/etc/bramble/agent.toml"
  for f in leader.toml leader-single.toml leader-ha.toml; do
    install -m 0640 "dist/$f" "$root/etc/bramble/$f.sample"
  done
  cp dist/etcd/etcd.env "$root/usr/share/doc/bramble/examples/"
  # Shell completions and man pages, made by a bramble this machine runs (they are the same for
  # every arch: the package's own if it runs here, else this machine's build).
  cli=
  for c in "$bins/bramble" "target/$dir/bramble" target/release/bramble target/debug/bramble; do
    if [ -x "$c" ] && "$c" --version >/dev/null 2>&1; then cli=$c; break; fi
  done
  [ -n "$cli" ] || { echo "cross/deb.sh: no bramble runs here to make completions and man pages (cargo build -p bramble-cli)" >&2; exit 1; }
  mkdir -p "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d" "$root/usr/share/man/man1"
  "$cli" completion bash > "$root/usr/share/bash-completion/completions/bramble"
  "$cli" completion zsh > "$root/usr/share/zsh/vendor-completions/_bramble"
  "$cli" completion fish > "$root/usr/share/fish/vendor_completions.d/bramble.fish"
  "$cli" man --out "$root/usr/share/man/man1" 2>/dev/null
  gzip -9n "$root"/usr/share/man/man1/*.1
  cp README.md docs/ARCHITECTURE.md docs/OPERATIONS.md docs/SECURITY.md "$root/usr/share/doc/bramble/"
  mkdir -p "$root/usr/share/doc/bramble/examples/prometheus"
  cp dist/prometheus/*.yml "$root/usr/share/doc/bramble/examples/prometheus/"
  installed=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  # (Unquoted: $version, $arch and $installed expand; nothing else in it may.)
  cat > "$root/DEBIAN/control" <<EOF
Package: bramble
Version: $version
Architecture: $arch
Maintainer: Bramble developers <bramble@example.invalid>
Installed-Size: $installed
Depends: nftables
Provides: bramble-cli
Conflicts: bramble-cli
Replaces: bramble-cli
Recommends: systemd-timesyncd | time-daemon, tzdata
Suggests: etcd-server
Section: admin
Priority: optional
Homepage: https://example.invalid/bramble
Description: orchestrator for clusters of single-board computers
 A leader keeps the desired state and schedules apps over QUIC onto small agents,
 which run OCI containers themselves (libcontainer, cgroups v1 and v2): services
 with DNS and load balancing, rolling updates with probes, secrets, volumes,
 metrics, autoscaling, backups and highly available leaders on etcd.
 .
 Nothing is started or enabled on installation. On a board: edit
 /etc/bramble/agent.toml, run "bramble-agent check", then
 "systemctl enable --now bramble-agent".
EOF
  echo "/etc/bramble/agent.toml" > "$root/DEBIAN/conffiles"
  for f in leader.toml leader-single.toml leader-ha.toml; do echo "/etc/bramble/$f.sample" >> "$root/DEBIAN/conffiles"; done
  cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Never starts, stops or enables a service: the admin does (an upgrade leaves running agents and
# their containers alone until the admin restarts the agent).
set -e
if [ "$1" = configure ]; then
  if ! getent passwd bramble >/dev/null; then
    if command -v adduser >/dev/null; then
      adduser --system --group --home /var/lib/bramble --no-create-home --quiet bramble
    elif command -v useradd >/dev/null; then
      useradd --system --user-group --home-dir /var/lib/bramble --no-create-home --shell /usr/sbin/nologin bramble
    fi
  fi
  if getent group bramble >/dev/null; then
    chgrp bramble /etc/bramble /etc/bramble/agent.toml /etc/bramble/*.sample 2>/dev/null || true
  fi
  mkdir -p /var/lib/bramble && chmod 0755 /var/lib/bramble
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
  if [ -z "$2" ]; then
    echo "bramble: installed; nothing started. Edit /etc/bramble/agent.toml, run 'bramble-agent check',"
    echo "bramble: then 'systemctl enable --now bramble-agent'. A leader: 'bramble-leader init --data-dir"
    echo "bramble: /var/lib/bramble/leader --listen 0.0.0.0:7443', then 'systemctl enable --now bramble-leader'."
  fi
fi
exit 0
EOF
  cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# Data (the cluster, the board's identity, images) is kept even on purge: remove
# /var/lib/bramble by hand if it is truly not needed.
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ "$1" = purge ] && getent passwd bramble >/dev/null && command -v deluser >/dev/null; then
  deluser --system --quiet bramble || true
fi
exit 0
EOF
  chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"
  find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  deb=$out/bramble_${version}_${arch}.deb
  dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
  # The CLI alone, for a laptop or a CI runner: bramble, its completions, man pages and README.
  # (The board package above holds the same, so each replaces the other.)
  cliroot=$out/cli-root-$arch
  rm -rf "$cliroot"
  mkdir -p "$cliroot/DEBIAN" "$cliroot/usr/bin" "$cliroot/usr/share/doc/bramble-cli" "$cliroot/usr/share/man"
  install -m 0755 "$root/usr/bin/bramble" "$cliroot/usr/bin/bramble"
  cp -r "$root/usr/share/bash-completion" "$root/usr/share/zsh" "$root/usr/share/fish" "$cliroot/usr/share/"
  cp -r "$root/usr/share/man/man1" "$cliroot/usr/share/man/"
  cp README.md "$cliroot/usr/share/doc/bramble-cli/"
  cat > "$cliroot/DEBIAN/control" <<CONTROL
Package: bramble-cli
Version: $version
Architecture: $arch
Maintainer: Bramble developers <bramble@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$cliroot" | cut -f1)
Conflicts: bramble
Replaces: bramble
Section: admin
Priority: optional
Homepage: https://example.invalid/bramble
Description: command-line client of Bramble clusters
 bramble drives a Bramble cluster (an orchestrator for single-board computers)
 over QUIC with mutual TLS: apply apps, follow rollouts, read logs, exec into
 replicas. No daemon; boards install the bramble package instead.
CONTROL
  find "$cliroot" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  clideb=$out/bramble-cli_${version}_${arch}.deb
  dpkg-deb --root-owner-group "${compress[@]}" --build "$cliroot" "$clideb" >/dev/null
  rm -rf "$cliroot"
  # It holds the CLI for this arch, its man page and completions, and nothing of a board's.
  held=$(dpkg-deb --contents "$clideb" | awk '{print $6}')
  for f in ./usr/bin/bramble ./usr/share/man/man1/bramble.1.gz ./usr/share/bash-completion/completions/bramble; do
    grep -qx "$f" <<< "$held" || { echo "cross/deb.sh: $clideb lacks $f" >&2; exit 1; }
  done
  if grep -qE 'bramble-(agent|leader|shim)$|systemd' <<< "$held"; then
    echo "cross/deb.sh: $clideb holds more than the CLI" >&2; exit 1
  fi
  echo "== $clideb ($(stat -c %s "$clideb") bytes)"
  rm -rf "$root"
  # What the package holds must hang together: every unit's program is in it, for this arch.
  check=$(mktemp -d)
  dpkg-deb -x "$deb" "$check"
  for u in "$check"/lib/systemd/system/*.service; do
    exe=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$u")
    [ -x "$check$exe" ] || { echo "cross/deb.sh: $(basename "$u") starts $exe, which the package lacks" >&2; exit 1; }
  done
  want=$(case "$arch" in amd64) echo x86-64 ;; arm64) echo aarch64 ;; armhf) echo ARM, ;; esac)
  file "$check/usr/bin/bramble-shim" | grep -q "$want" ||
    { echo "cross/deb.sh: the $arch package holds $(file -b "$check/usr/bin/bramble-shim")" >&2; exit 1; }
  rm -rf "$check"
  echo "== $deb ($(stat -c %s "$deb") bytes)"
  dpkg-deb --contents "$deb" | awk '{print "   " $1, $6}'
done
