#!/usr/bin/env bash
# Makes the development CA and one certificate per region for the replicators' mutual TLS.
#   deploy/make-certs.sh DIR REGION...
# DIR/ca.pem and DIR/ca.key are the CA (kept if present, so new regions join the same CA);
# DIR/REGION.pem and DIR/REGION.key carry CN=REGION and subjectAltName DNS:REGION, which is the
# name a peer checks (and how a replicator tells which peer is calling). EC P-256, 825 days.
# A development CA only: production regions get certificates from the operator's own CA.
# Every region name is checked before anything is written (the daemons' rule, ValidRegionName in
# common/config_files.h: 1..32 of [A-Za-z0-9-]); a bad one exits 2. A kept certificate that does
# not verify against DIR/ca.pem is made again. If the CA is missing or empty while certificates it
# signed are there, the script refuses (exit 1) instead of making a new CA those would not
# verify against: restore the CA, or remove the certificates to start over.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 DIR REGION..." >&2
  exit 2
fi
dir=$1
shift
for region in "$@"; do
  if [[ ! $region =~ ^[A-Za-z0-9-]{1,32}$ || $region == ca ]]; then
    echo "make-certs: region name '$region' must be 1..32 of [A-Za-z0-9-], and not 'ca' (nothing was written)" >&2
    exit 2
  fi
done
if [[ ! -s $dir/ca.pem || ! -s $dir/ca.key ]]; then
  # A new CA would leave every certificate the old one signed unverifiable: the replicators'
  # mTLS handshakes would fail after their next restart, with a TLS error, not a config error.
  signed=()
  for f in "$dir"/*.pem; do
    [[ -s $f && ${f##*/} != ca.pem ]] && signed+=("${f##*/}")
  done
  if ((${#signed[@]} > 0)); then
    echo "make-certs: $dir/ca.pem or $dir/ca.key is missing or empty, but certificates signed by that CA exist (${signed[*]}); restore the CA, or remove $dir's certificates (*.pem, *.key) to make a new CA and new certificates (nothing was written)" >&2
    exit 1
  fi
fi
mkdir -p "$dir"
umask 077
if [[ ! -s $dir/ca.pem || ! -s $dir/ca.key ]]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 825 -subj "/CN=meridian-dev-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.pem" 2>/dev/null
fi
for region in "$@"; do
  if [[ -s $dir/$region.pem && -s $dir/$region.key ]]; then
    openssl verify -CAfile "$dir/ca.pem" "$dir/$region.pem" >/dev/null 2>&1 && continue
    echo "make-certs: $dir/$region.pem does not verify against $dir/ca.pem: making it again" >&2
  fi
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$region.key" 2>/dev/null
  openssl req -new -key "$dir/$region.key" -subj "/CN=$region" -out "$dir/$region.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' \
    "$region" >"$dir/$region.ext"
  openssl x509 -req -in "$dir/$region.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 825 -sha256 -extfile "$dir/$region.ext" -out "$dir/$region.pem" 2>/dev/null
  rm -f "$dir/$region.csr" "$dir/$region.ext"
done
chmod 0644 "$dir"/*.pem
