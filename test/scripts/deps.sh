#!/bin/bash
# Installs the Debian packages that building and testing stigg need, if any
# is missing. As root it runs apt-get; otherwise it says what to install.
set -euo pipefail

PG_MAJOR=${PG_MAJOR:-15}
PACKAGES=(
	make gcc openssl
	"postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR"
	libcurl4-openssl-dev
	libprotobuf-c-dev protobuf-c-compiler
	protobuf-compiler libprotobuf-dev
	python3 python3-grpcio python3-protobuf
	libipc-run-perl
	libgrpc-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "stigg: missing Debian packages: ${missing[*]}" >&2
	echo "stigg: install them as root: apt-get install ${missing[*]}" >&2
	exit 1
fi
echo "stigg: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
