#!/usr/bin/env bash
# Certificates for the push scaler's mutual TLS (KEDA_SCALER=push), made with openssl:
#   scripts/scaler-certs.sh OUT_DIR NAME...
# NAME: each DNS name or IP address KEDA dials the worker at (scalerAddress's host).
# Writes OUT_DIR/server/{tls.crt,tls.key,ca.crt} for the worker (SCALER_TLS_DIR) and
# OUT_DIR/client/{tls.crt,tls.key,ca.crt} for KEDA (the Secret SCALER_SECRET_NAME in the
# sessions namespace); one CA signs both. Keeps what is already there. Valid 365 days.
set -o errexit -o nounset -o pipefail
[ "$#" -ge 2 ] || { echo "usage: $0 OUT_DIR NAME..." >&2; exit 2; }
out=$1; shift
[ -f "$out/server/tls.crt" ] && [ -f "$out/client/tls.crt" ] && exit 0
mkdir -p "$out/server" "$out/client"
umask 077
sans=()
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then sans+=("IP:$name"); else sans+=("DNS:$name"); fi
done
san=$(IFS=,; echo "${sans[*]}")
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=session-manager-scaler-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
sign() {  # sign DIR CN EXTENSIONS
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1/tls.key" -out "$1/tls.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1/ext.cnf"
  openssl x509 -req -in "$1/tls.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile "$1/ext.cnf" -out "$1/tls.crt" 2>/dev/null
  rm -f "$1/tls.csr" "$1/ext.cnf"
  cp ca.crt "$1/ca.crt"
}
sign server session-manager-scaler "extendedKeyUsage=serverAuth
subjectAltName=$san"
sign client keda "extendedKeyUsage=clientAuth"
rm -f ca.srl
