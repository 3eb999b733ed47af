#!/usr/bin/env bash
# build.sh builds the kube-apiserver of this module into a cache directory and
# prints the binary's path. A binary already built from the same go.mod/go.sum
# and main.go is reused, so only the first call pays the build (3 to 11 minutes on two cores).
#
# `build.sh kubectl` does the same for tools/kubectl: kubectl of the same
# Kubernetes release, which the manifest tests of deploy/ dry-run with.
#
# The cache directory is $LOOM_KUBE_APISERVER_CACHE when set, else
# $XDG_CACHE_HOME/loom-kube-apiserver (default ~/.cache/loom-kube-apiserver).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LOOM_KUBE_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/loom-kube-apiserver}"
name=kube-apiserver
mod="$here"
case "${1:-}" in
"") ;;
kubectl) name=kubectl mod="$(cd "$here/../kubectl" && pwd)" ;;
*)
	echo "usage: $0 [kubectl]" >&2
	exit 2
	;;
esac
# The version the binaries report (kubectl and clients read it), taken from
# the k8s.io/kubernetes requirement of this module's go.mod.
version="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="$(echo "$version" | cut -d. -f2)"
if [[ $name == kubectl ]]; then
	# The staging modules of release v1.X.Y are tagged v0.X.Y.
	have="$(cd "$mod" && go list -m -f '{{.Version}}' k8s.io/kubectl)"
	if [[ $have != "v0.${version#v1.}" ]]; then
		echo "build.sh: tools/kubectl requires k8s.io/kubectl $have, but tools/kube-apiserver is Kubernetes $version: make them the same release" >&2
		exit 1
	fi
fi
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
key="$( (cat "$mod/go.mod" "$mod/go.sum" "$mod/main.go"; echo "$ldflags") | sha256sum | cut -c1-16)"
out="$cache/$key/$name"
if [[ -x "$out" ]]; then
	echo "$out"
	exit 0
fi
mkdir -p "$cache/$key"
tmp="$(mktemp "$cache/$key/$name.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$tmp" .) >&2
chmod +x "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
