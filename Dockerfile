# The operator's image: the prebuilt release binary on a distroless base (as kube-rs/controller-rs
# does). Nothing is compiled here; build the binary first.
#
#   docker/podman build --build-arg VERSION=0.1.0 -t ec2-operator:0.1.0 <context>
#
# The context must hold dist/<os>/<arch>/ec2-operator (TARGETOS/TARGETARCH are set by BuildKit and
# buildx; Debian 12's podman 4.3 does not set them, so hack/image.sh passes them; without them the
# path falls back to linux/amd64). hack/image.sh stages a
# stripped copy of target/release/ec2-operator into such a context (`make image`); the release
# workflow stages one binary per architecture into dist/ and builds both with buildx.
#
# BASE_IMAGE: any runtime with glibc >= 2.36 (the binary is built on Debian 12 and linked with packed
# relative relocations), libgcc_s, CA certificates and a nonroot user 65532, e.g.
# distroless cc (the default, for a builder that reaches gcr.io). With no registry, hack/image.sh
# makes an equivalent base from Debian's packages and passes it here.
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
# No remote is configured in this checkout: the release workflow passes the real repository URL.
ARG SOURCE=https://github.com/k106/ec2-operator

LABEL org.opencontainers.image.title="ec2-operator" \
      org.opencontainers.image.description="Kubernetes operator that reconciles Ec2Instance custom resources against AWS EC2" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# Owned by root and not writable by the user that runs it; mode 0755 comes from the context.
COPY dist/${TARGETOS:-linux}/${TARGETARCH:-amd64}/ec2-operator /usr/local/bin/ec2-operator

# Numeric, so `runAsNonRoot: true` can check it without /etc/passwd. The binary writes nothing to
# disk: readOnlyRootFilesystem: true needs no volume.
USER 65532:65532
# The admin server (metrics, /healthz, /readyz); the Deployment passes --admin-addr 0.0.0.0:8080.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ec2-operator"]
