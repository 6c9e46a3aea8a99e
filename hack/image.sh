#!/usr/bin/env bash
# The operator's container image, built here with Debian's podman (no Docker engine, no registry).
#
#   hack/image.sh [build]     install podman if missing, make the base, build localhost/ec2-operator:<version>
#                             and :dev from the release binary (`make image`)
#   hack/image.sh base        only make the base image (localhost/ec2-operator-base:<digest of its files>)
#   hack/image.sh save        build if needed, then write .cache/image/ec2-operator.tar (docker-archive with
#                             both tags: `ctr -n k8s.io images import`, `podman load`, `docker load`)
#   hack/image.sh podman ARGS...   podman with this repository's config and storage, e.g.
#                             hack/image.sh podman run --rm --network host --read-only localhost/ec2-operator:dev --help
#
# Everything podman keeps lives under .cache/podman (its own containers.conf, storage.conf and
# registries.conf), so nothing depends on the machine's /etc/containers beyond the policy.json that
# Debian's package installs. Facts of these machines baked in: vfs storage, runc (crun fails on the
# cgroup v1 layout), cgroupfs, and no default RLIMIT_NOFILE ulimit (refused here).
#
# The base is distroless-style and made from Debian's packages (apt-get download + dpkg-deb -x, no
# maintainer scripts): the glibc libraries the binary links (ld-linux, libc, libm), libgcc_s, the CA
# bundle, passwd/group with root and nonroot (65532), /tmp and /home/nonroot, and per-package
# status files in /var/lib/dpkg/status.d (as distroless has, for image scanners). Its tarball is
# reproducible: sorted, fixed mtime and owners; its tag is the tarball's digest.
#
# Env: CARGO_BUILD (1, the default: build the release binary first; 0: use BINARY as it is),
# RELR (1, the default: link it with -z pack-relative-relocs, see build(); 0: plain
# `cargo build --release`, whose binary makes a 30.5 MB image), IMAGE (localhost/ec2-operator),
# BINARY (target/release/ec2-operator).
set -euo pipefail
shopt -s inherit_errexit

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"
CACHE="$ROOT/.cache"
PODMAN_DIR="$CACHE/podman"
WORK="$CACHE/image"
IMAGE="${IMAGE:-localhost/ec2-operator}"
BINARY="${BINARY:-$ROOT/target/release/ec2-operator}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n1)"
ARCH="$(dpkg --print-architecture)"
# Debian packages of the base: libc6 and libgcc-s1 hold what `ldd` lists, gcc-12-base the licence of
# libgcc_s, ca-certificates the bundle.
BASE_PACKAGES=(libc6 libgcc-s1 gcc-12-base ca-certificates)
TOOLS=(podman runc)

say() { echo "image: $*" >&2; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# --- tools -----------------------------------------------------------------------------------------

install_tools() {
  local missing=() p
  for p in "${TOOLS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  local t0
  t0="$(now)"
  say "installing ${missing[*]} from Debian (apt-get)"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  # Update the lists only when apt cannot find the package as they are.
  apt-cache show "${missing[@]}" >/dev/null 2>&1 || "${sudo[@]}" apt-get update -qq
  # runc named explicitly: podman depends on crun | runc, and crun fails on these machines.
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 \
    "${missing[@]}" >"$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; die "apt-get install failed"; }
  say "installed ${missing[*]} in $(took "$t0")"
}

write_config() {
  mkdir -p "$PODMAN_DIR"/{storage,run,tmp}
  cat >"$PODMAN_DIR/containers.conf" <<EOF
# Written by hack/image.sh; podman here reads only this file (CONTAINERS_CONF).
[containers]
# The default RLIMIT_NOFILE ulimit is refused on these machines.
default_ulimits = []
netns = "host"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_DIR/run/events.log"
tmp_dir = "$PODMAN_DIR/tmp"
static_dir = "$PODMAN_DIR/storage/libpod"
volume_path = "$PODMAN_DIR/storage/volumes"
EOF
  cat >"$PODMAN_DIR/storage.conf" <<EOF
# Written by hack/image.sh (CONTAINERS_STORAGE_CONF). vfs: no overlay or fuse needed.
[storage]
driver = "vfs"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_DIR/run"
EOF
  cat >"$PODMAN_DIR/registries.conf" <<'EOF'
# Written by hack/image.sh (CONTAINERS_REGISTRIES_CONF): no registry is reachable here, so short
# names resolve to nothing and nothing is pulled.
unqualified-search-registries = []
short-name-mode = "enforcing"
EOF
}

pm() {
  CONTAINERS_CONF="$PODMAN_DIR/containers.conf" \
    CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf" \
    CONTAINERS_REGISTRIES_CONF="$PODMAN_DIR/registries.conf" \
    TMPDIR="$PODMAN_DIR/tmp" \
    podman --root "$PODMAN_DIR/storage" --runroot "$PODMAN_DIR/run" \
    --storage-driver vfs --runtime runc --cgroup-manager cgroupfs "$@"
}

setup() {
  mkdir -p "$WORK"
  [ -f "$CACHE/.gitignore" ] || echo '*' >"$CACHE/.gitignore"
  install_tools
  write_config
}

# --- base ------------------------------------------------------------------------------------------

# make_base: print the base image's name, importing it when this exact content is not there yet.
make_base() {
  local t0 debs="$WORK/debs" rootfs="$WORK/base-rootfs" tarball="$WORK/base.tar"
  t0="$(now)"
  mkdir -p "$debs"
  # The candidate versions apt knows now; a .deb already downloaded is reused.
  local pkg ver file missing=()
  for pkg in "${BASE_PACKAGES[@]}"; do
    ver="$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')"
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
      apt-get update -qq
      ver="$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')"
    fi
    file="$(ls "$debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)"
    [ -n "$file" ] || missing+=("$pkg=$ver")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "${missing[@]}") || die "apt-get download ${missing[*]} failed"
  fi

  rm -rf "$rootfs"
  mkdir -p "$rootfs/x" "$rootfs/var/lib/dpkg/status.d"
  for pkg in "${BASE_PACKAGES[@]}"; do
    ver="$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')"
    file="$(ls "$debs/${pkg}_${ver//:/%3a}_"*.deb | head -n1)"
    dpkg-deb -x "$file" "$rootfs/x"
    dpkg-deb -f "$file" >"$rootfs/var/lib/dpkg/status.d/$pkg"
    # Licences, as distroless keeps them (libgcc-s1's doc dir is a link to gcc-12-base's).
    if [ -f "$rootfs/x/usr/share/doc/$pkg/copyright" ] && [ ! -L "$rootfs/x/usr/share/doc/$pkg" ]; then
      mkdir -p "$rootfs/usr/share/doc/$pkg"
      cp "$rootfs/x/usr/share/doc/$pkg/copyright" "$rootfs/usr/share/doc/$pkg/copyright"
    fi
  done

  # The libraries where the packages put them (Debian 12's packages still ship /lib; a merged-/usr
  # system only links /lib into /usr at install time), plus the loader's link in /lib64 on amd64.
  local multiarch lib found
  multiarch="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine)"
  # The loader (ld-linux-x86-64.so.2 on amd64, ld-linux-aarch64.so.1 on arm64) and the libraries
  # `ldd target/release/ec2-operator` lists, nothing else of glibc. Name lookups need no NSS module
  # files: since glibc 2.34 `files` and `dns` are inside libc.so.6.
  for lib in 'ld-linux-*.so.*' libc.so.6 libm.so.6 libgcc_s.so.1; do
    found="$(cd "$rootfs/x" && find lib usr/lib -path "*/$multiarch/$lib" 2>/dev/null | head -n1)"
    [ -n "$found" ] || die "$lib not found in ${BASE_PACKAGES[*]}"
    mkdir -p "$rootfs/$(dirname "$found")"
    cp -a "$rootfs/x/$found" "$rootfs/$found"
  done
  [ ! -d "$rootfs/x/lib64" ] || cp -a "$rootfs/x/lib64" "$rootfs/lib64"

  # The CA bundle, as update-ca-certificates writes it (its maintainer script is not run): the
  # Mozilla certificates in name order, each PEM as it ships.
  mkdir -p "$rootfs/etc/ssl/certs"
  local crt
  for crt in $(cd "$rootfs/x/usr/share/ca-certificates" && find mozilla -name '*.crt' | LC_ALL=C sort); do
    cat "$rootfs/x/usr/share/ca-certificates/$crt"
  done >"$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs/x"

  # Users and files as distroless has them.
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$rootfs/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$rootfs/etc/group"
  printf '%s\n' 'hosts: files dns' 'networks: files' 'passwd: files' 'group: files' >"$rootfs/etc/nsswitch.conf"
  local debian
  debian="$(sed -n 's/^VERSION_ID="\?\([^"]*\)"\?$/\1/p' /etc/os-release)"
  printf '%s\n' "PRETTY_NAME=\"ec2-operator base (distroless-style, Debian $debian)\"" \
    "NAME=\"Debian GNU/Linux\"" "ID=debian" "VERSION_ID=\"$debian\"" >"$rootfs/etc/os-release"
  mkdir -p "$rootfs/tmp" "$rootfs/home/nonroot" "$rootfs/root" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
  chmod 1777 "$rootfs/tmp"
  chmod 700 "$rootfs/home/nonroot" "$rootfs/root"

  # One reproducible layer: same packages, same bytes.
  tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 --format=gnu \
    -C "$rootfs" -cf "$tarball.tmp" --exclude=./home/nonroot .
  tar --mtime=@0 --numeric-owner --owner=65532 --group=65532 --format=gnu \
    -C "$rootfs" -rf "$tarball.tmp" ./home/nonroot
  mv "$tarball.tmp" "$tarball"
  local sum name
  sum="$(sha256sum "$tarball" | cut -c1-12)"
  name="localhost/ec2-operator-base:$sum"
  if pm image exists "$name"; then
    say "base $name exists ($(du -sk "$rootfs" | cut -f1) KiB of files)"
  else
    # Built from scratch rather than `podman import`ed: with a fixed timestamp the base's config,
    # and so the final image's id, is the same on every run.
    local ctx="$WORK/base-context"
    rm -rf "$ctx" && mkdir -p "$ctx"
    ln "$tarball" "$ctx/base.tar"
    cat >"$ctx/Containerfile" <<EOF
FROM scratch
ADD base.tar /
LABEL org.opencontainers.image.title="ec2-operator-base" \\
      org.opencontainers.image.description="distroless-style base: ${BASE_PACKAGES[*]} from Debian $debian"
ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /home/nonroot
EOF
    pm build --quiet --pull=never --format oci --timestamp 0 --tag "$name" \
      --file "$ctx/Containerfile" "$ctx" >/dev/null
    pm tag "$name" localhost/ec2-operator-base:latest
    say "base $name built in $(took "$t0")"
  fi
  echo "$name"
}

# --- image -----------------------------------------------------------------------------------------

build() {
  local t0 base ctx="$WORK/context" os="linux"
  if [ "${CARGO_BUILD:-1}" = 1 ]; then
    t0="$(now)"
    if [ "${RELR:-1}" = 1 ]; then
      # The release profile as it is, linked with packed relative relocations (DT_RELR, read by
      # glibc >= 2.36, which Debian 12 and distroless *-debian12 have): .rela.dyn goes from 1.3 MB
      # to 15 kB, which keeps the image under 30 MB. Only the binary's own link takes the flag (no
      # dependency is rebuilt); a later plain `cargo build --release` relinks it without.
      say "cargo rustc --release --locked --bin ec2-operator -- -C link-arg=-Wl,-z,pack-relative-relocs"
      (cd "$ROOT" && cargo rustc --release --locked --bin ec2-operator -- -C link-arg=-Wl,-z,pack-relative-relocs)
    else
      say "cargo build --release --locked --bin ec2-operator"
      (cd "$ROOT" && cargo build --release --locked --bin ec2-operator)
    fi
    say "release binary ready in $(took "$t0")"
  fi
  [ -x "$BINARY" ] || die "$BINARY is missing: cargo build --release --locked --bin ec2-operator"
  base="$(make_base)"
  t0="$(now)"
  # A staging context holding only the binary, stripped (the release profile already strips;
  # this keeps the image small whatever profile built it).
  rm -rf "$ctx"
  mkdir -p "$ctx/dist/$os/$ARCH"
  strip --strip-all -o "$ctx/dist/$os/$ARCH/ec2-operator" "$BINARY"
  chmod 0755 "$ctx/dist/$os/$ARCH/ec2-operator"
  say "binary: $(stat -c %s "$BINARY") bytes, stripped $(stat -c %s "$ctx/dist/$os/$ARCH/ec2-operator") bytes"
  local revision="unknown" created source="https://github.com/k106/ec2-operator" epoch
  revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  epoch="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)"
  created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
  source="$(git -C "$ROOT" remote get-url origin 2>/dev/null || echo "$source")"
  pm build --quiet --pull=never --format oci \
    --file "$ROOT/Dockerfile" \
    --build-arg "BASE_IMAGE=$base" --build-arg "TARGETOS=$os" --build-arg "TARGETARCH=$ARCH" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$created" --build-arg "SOURCE=$source" \
    --annotation "org.opencontainers.image.version=$VERSION" \
    --annotation "org.opencontainers.image.revision=$revision" \
    --annotation "org.opencontainers.image.source=$source" \
    --annotation "org.opencontainers.image.licenses=Apache-2.0" \
    --timestamp "$epoch" \
    --tag "$IMAGE:$VERSION" --tag "$IMAGE:dev" \
    "$ctx" >/dev/null
  say "built $IMAGE:$VERSION and $IMAGE:dev in $(took "$t0")"
  pm images --filter "reference=$IMAGE" --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' >&2
}

save() {
  local out="$WORK/ec2-operator.tar"
  pm image exists "$IMAGE:$VERSION" || build
  rm -f "$out.tmp"
  pm save --quiet --format docker-archive --multi-image-archive -o "$out.tmp" "$IMAGE:$VERSION" "$IMAGE:dev"
  mv "$out.tmp" "$out"
  say "saved $IMAGE:$VERSION and :dev to $out ($(stat -c %s "$out") bytes)"
  echo "$out"
}

case "${1:-build}" in
  build) setup; t0="$(now)"; CARGO_BUILD="${CARGO_BUILD:-1}" build; say "done in $(took "$t0") (after tools)" ;;
  base) setup; make_base ;;
  save) setup; save ;;
  podman) shift; setup >/dev/null; pm "$@" ;;
  *) echo "usage: $0 [build|base|save|podman ARGS...]" >&2; exit 2 ;;
esac
