#!/usr/bin/env bash
# build.sh builds the kube-apiserver of this module into a cache directory and
# prints the binary's path. A binary already built from the same go.mod/go.sum
# and main.go is reused, so only the first call pays the ~10 minute build.
#
# The cache directory is $LOOM_KUBE_APISERVER_CACHE when set, else
# $XDG_CACHE_HOME/loom-kube-apiserver (default ~/.cache/loom-kube-apiserver).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LOOM_KUBE_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/loom-kube-apiserver}"
# The version the server reports (kubectl and clients read it), taken from
# the k8s.io/kubernetes requirement of go.mod.
version="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="$(echo "$version" | cut -d. -f2)"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
key="$( (cat "$here/go.mod" "$here/go.sum" "$here/main.go"; echo "$ldflags") | sha256sum | cut -c1-16)"
out="$cache/$key/kube-apiserver"
if [[ -x "$out" ]]; then
	echo "$out"
	exit 0
fi
mkdir -p "$cache/$key"
tmp="$(mktemp "$cache/$key/kube-apiserver.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$tmp" .) >&2
chmod +x "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
