#!/bin/sh
# Makes what dist/etcd/etcd.env and dist/leader-ha.toml name, with openssl: a CA for etcd, a
# certificate per member (server and peer, for its name and address) and one client certificate
# for Bramble's leaders.
#   make-certs.sh OUT pi-1=10.0.0.1 pi-2=10.0.0.2 pi-3=10.0.0.3
# Then on each board: OUT/ca.crt and OUT/NAME.{crt,key} in /etc/etcd/pki/ (owned by etcd, key
# 0600), and OUT/ca.crt, OUT/leader.{crt,key} in /etc/bramble/etcd/ (owned by bramble, key 0600).
# Keep OUT/ca.key off the boards.
set -eu
out=$1; shift
mkdir -p "$out" && chmod 700 "$out"
umask 077
days=3650
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=bramble etcd CA" -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
sign() { # name, subject alt names, extended key usage
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$out/$1.key" -out "$out/$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$2" "$3" > "$out/$1.ext"
  openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -extfile "$out/$1.ext" -out "$out/$1.crt" 2>/dev/null
  rm -f "$out/$1.csr" "$out/$1.ext"
}
for member in "$@"; do
  name=${member%%=*}; addr=${member#*=}
  sign "$name" "DNS:$name,IP:$addr,IP:127.0.0.1,DNS:localhost" "serverAuth,clientAuth"
done
sign leader "DNS:bramble-leader" "clientAuth"
chmod 644 "$out"/*.crt
echo "made $out: ca.crt, $(for m in "$@"; do printf '%s.crt ' "${m%%=*}"; done)leader.crt (and their keys)"
