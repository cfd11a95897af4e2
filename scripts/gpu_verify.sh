#!/usr/bin/env bash
# One command per step for verifying the CUDA backend on a GPU machine (the device tool: a bare image with nvcc,
# CMake, PyTorch and transformers, but none of our apt libraries and no network). See docs/CUDA.md.
#
#   scripts/gpu_verify.sh pack                 HERE (Debian dev machine): bundle the build dependencies the GPU
#                                              image lacks (oneDNN, OpenCL loader, PCRE2, nlohmann_json, CLI11,
#                                              GoogleTest) into .gpu-deps.tgz (git-ignored via .git/info/exclude);
#                                              the device call then names it in `carry`.
#   scripts/gpu_verify.sh build                THERE: cmake + build quantserve and qs_cuda_tests in build-gpu
#                                              (QUANTSERVE_MINIMAL=ON: no gRPC; CUDA arch of the GPU present)
#   scripts/gpu_verify.sh test                 THERE: ctest -L gpu (the CUDA unit + GPU conformance tests)
#   scripts/gpu_verify.sh smoke                THERE: quantserve generate/inspect/bench on a fixture, on cuda
#   scripts/gpu_verify.sh sanitize             THERE: compute-sanitizer memcheck on a subset of qs_cuda_tests
#   scripts/gpu_verify.sh bench [MODELS]       THERE: bench/gpu_bench.py (gpt2-small,pythia-1.4b by default)
#
# Steps chain: `scripts/gpu_verify.sh build test smoke`. Every step after `build` builds first when build-gpu is
# missing (a machine given back between calls starts bare). Logs and results go to $OUT (the device tool's
# folder that comes back; ./gpu-out when unset): env.txt, build.log, tests.log, ctest_gpu.xml, smoke.log,
# bench_*.log and the bench JSON (also written to bench/results/ in the tree).
# Environment: QS_COMMIT (the commit measured, for the JSON; there is no .git on the device), QS_CUDA_ARCH
# (default: the GPU's compute capability), QS_FULL=1 (a full, non-minimal build where gRPC is installed).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
BUILD=$ROOT/build-gpu
DEPS_TGZ=$ROOT/.gpu-deps.tgz
DEPS=/tmp/qs-deps
JOBS=$(nproc 2>/dev/null || echo 8)

say() { echo "[gpu_verify] $*" >&2; }

pack() {
  # Files of these Debian packages, paths kept (their CMake configs find their prefix relative to themselves).
  local pkgs="libdnnl2 libdnnl-dev ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-c-headers nlohmann-json3-dev
              libcli11-dev libgtest-dev libgmock-dev"
  local stage
  stage=$(mktemp -d)
  for p in $pkgs; do
    dpkg -L "$p" >/dev/null 2>&1 || { say "package $p is not installed here (scripts/setup.sh installs it)"; exit 1; }
    dpkg -L "$p" | grep -Ev '^/usr/share/(doc|man|lintian|bug)' | while read -r f; do
      if [ -f "$f" ] || [ -L "$f" ]; then cp -a --parents "$f" "$stage" 2>/dev/null || true; fi
    done
  done
  # PCRE2 and utf8proc: the headers and the static libraries only (no .so to carry, nothing to load at run time).
  cp -a --parents /usr/include/pcre2.h /usr/lib/x86_64-linux-gnu/libpcre2-8.a "$stage"
  cp -a --parents /usr/include/utf8proc.h /usr/lib/x86_64-linux-gnu/libutf8proc.a "$stage"
  local f
  for f in usr/lib/x86_64-linux-gnu/libdnnl.so.2 usr/lib/x86_64-linux-gnu/cmake/dnnl/dnnl-config.cmake \
           usr/lib/x86_64-linux-gnu/libOpenCL.so.1 usr/include/CL/cl.h usr/include/nlohmann/json.hpp \
           usr/include/CLI/CLI.hpp usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake usr/include/pcre2.h \
           usr/include/utf8proc.h; do
    [ -e "$stage/$f" ] || { say "bundle is missing /$f"; exit 1; }
  done
  tar -C "$stage" -czf "$DEPS_TGZ" usr
  rm -rf "$stage"
  grep -qxF '/.gpu-deps.tgz' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu-deps.tgz' >> .git/info/exclude; }
  grep -qxF '/gpu-out/' .git/info/exclude 2>/dev/null || echo '/gpu-out/' >> .git/info/exclude
  say "wrote $DEPS_TGZ ($(du -h "$DEPS_TGZ" | cut -f1)); carry it: run(carry=[\".gpu-deps.tgz\"], ...)"
}

setup_env() {
  [ -n "${QS_ENV_DONE:-}" ] && return
  QS_ENV_DONE=1
  if ! command -v nvcc >/dev/null; then
    for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [ -x "$d/nvcc" ] && export PATH=$d:$PATH && break; done
  fi
  EXTRA_CMAKE=()
  CXX_EXTRA=""
  if [ -f "$DEPS_TGZ" ]; then
    if [ ! -d "$DEPS/usr" ]; then mkdir -p "$DEPS" && tar -C "$DEPS" -xzf "$DEPS_TGZ"; fi
    EXTRA_CMAKE+=("-DCMAKE_PREFIX_PATH=$DEPS/usr")
    CXX_EXTRA="-isystem $DEPS/usr/include"
    export LD_LIBRARY_PATH=$DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  else
    say "no .gpu-deps.tgz: relying on the machine's own oneDNN, PCRE2, nlohmann_json, CLI11 and GoogleTest"
  fi
  # cuBLAS from pip wheels (nvidia-cublas) when the toolkit next to nvcc has none.
  local nvcc_root
  nvcc_root=$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")")
  if ! ls "$nvcc_root"/lib64/libcublasLt.so* "$nvcc_root"/lib/libcublasLt.so* "$nvcc_root"/targets/*/lib/libcublasLt.so* >/dev/null 2>&1; then
    local lt
    lt=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
for d in site.getsitepackages():
    for f in glob.glob(os.path.join(d, "nvidia", "cu*", "lib", "libcublasLt.so*")) + glob.glob(os.path.join(d, "nvidia", "cublas", "lib", "libcublasLt.so*")):
        print(f); raise SystemExit
EOF
)
    if [ -n "$lt" ]; then
      local libdir incdir
      libdir=$(dirname "$lt")
      incdir=$(dirname "$libdir")/include
      say "cuBLAS from $libdir (pip wheel)"
      EXTRA_CMAKE+=("-DCUDA_cublasLt_LIBRARY=$lt" "-DCUDA_cublas_LIBRARY=$(ls "$libdir"/libcublas.so* | grep -v Lt | head -1)")
      CXX_EXTRA="$CXX_EXTRA -isystem $incdir"
      export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
  fi
  ARCH=${QS_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')}
  ARCH=${ARCH:-90}
}

write_env() {
  {
    date -u
    uname -a
    cat /etc/os-release 2>/dev/null | head -2
    nvidia-smi 2>&1 | head -15
    command -v nvcc && nvcc --version | tail -2
    cmake --version | head -1
    g++ --version | head -1
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1
    echo "QS_COMMIT=${QS_COMMIT:-unset} ARCH=$ARCH deps=$([ -f "$DEPS_TGZ" ] && echo bundle || echo system)"
  } > "$OUT/env.txt" 2>&1
}

build() {
  setup_env
  write_env
  local minimal=ON gen=()
  [ "${QS_FULL:-0}" = 1 ] && minimal=OFF
  command -v ninja >/dev/null && gen=(-G Ninja)
  say "building in $BUILD (sm_$ARCH, QUANTSERVE_MINIMAL=$minimal, $JOBS jobs); log: $OUT/build.log"
  local t0=$SECONDS
  {
    cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DQUANTSERVE_CUDA=ON \
      -DQUANTSERVE_MINIMAL=$minimal -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" \
      -DCMAKE_CXX_FLAGS="$CXX_EXTRA" -DCMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE=PRE_TEST "${EXTRA_CMAKE[@]}" &&
    cmake --build "$BUILD" -j"$JOBS" --target quantserve qs_cuda_tests
  } >> "$OUT/build.log" 2>&1
  local rc=$?
  say "build rc=$rc in $((SECONDS - t0)) s"
  [ $rc = 0 ] || { tail -40 "$OUT/build.log" >&2; exit $rc; }
}

need_build() { [ -x "$BUILD/server/quantserve" ] && [ -x "$BUILD/tests/qs_cuda_tests" ] || build; setup_env; }

run_tests() {
  need_build
  say "ctest -L gpu; log: $OUT/tests.log"
  ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout 300 -j1 --output-junit "$OUT/ctest_gpu.xml" \
    > "$OUT/tests.log" 2>&1
  local rc=$?
  grep -E "tests passed|tests failed|\*\*\*Failed|Not Run|Skipped" "$OUT/tests.log" | tail -30 >&2
  grep -h "cuda conformance\]" "$BUILD"/Testing/Temporary/LastTest.log 2>/dev/null | sort -u >> "$OUT/tests.log"
  say "tests rc=$rc"
  return $rc
}

smoke() {
  need_build
  local qs=$BUILD/server/quantserve m=$ROOT/tests/fixtures/models/llama
  {
    "$qs" inspect --device cuda -m "$m" --precisions fp32,fp16,bf16,int8,int8-weight-only,int8-naive
    for p in fp32 fp16 int8 int8-weight-only; do
      "$qs" generate --device cuda --precision "$p" -m "$m" -n 16 "Hello" || echo "generate $p failed: $?"
    done
    "$qs" bench --device cuda -m "$ROOT/tests/fixtures/models/gpt2" --precisions fp32,fp16,int8,int8-weight-only \
      --batch 1,8 --prompt-tokens 32 --new-tokens 32
    QUANTSERVE_CUDA_GRAPHS=0 "$qs" bench --device cuda -m "$ROOT/tests/fixtures/models/gpt2" --precisions fp16 \
      --batch 1,8 --prompt-tokens 32 --new-tokens 32
  } > "$OUT/smoke.log" 2>&1
  say "smoke rc=$?; log: $OUT/smoke.log"
  tail -20 "$OUT/smoke.log" >&2
}

sanitize() {
  need_build
  command -v compute-sanitizer >/dev/null || { say "no compute-sanitizer"; return 0; }
  compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/tests/qs_cuda_tests" \
    --gtest_filter='*Attention*:*Norms*:*GemmaQwen3*:*Embedding*:*Rope*:*CudaConformance.DecodeSteps*/gpt2' \
    > "$OUT/sanitize.log" 2>&1
  say "memcheck rc=$?; log: $OUT/sanitize.log"
  tail -15 "$OUT/sanitize.log" >&2
}

bench() {
  need_build
  local models=${1:-gpt2-small,pythia-1.4b} tag
  tag=$(echo "$models" | tr ',' '_')
  PYTHONUNBUFFERED=1 python3 "$ROOT/bench/gpu_bench.py" --quantserve "$BUILD/server/quantserve" --models "$models" \
    2>&1 | tee "$OUT/bench_$tag.log" | grep -E "^\[gpu_bench\] wrote|target:|^[a-z0-9.-]+ +(quantserve|transformers)" >&2
  local rc=${PIPESTATUS[0]}
  cp bench/results/gpu_*.json "$OUT/" 2>/dev/null
  say "bench rc=$rc"
  return $rc
}

[ $# -gt 0 ] || set -- build test
status=0
while [ $# -gt 0 ]; do
  step=$1
  shift
  case $step in
    pack) pack ;;
    build) build ;;
    test) run_tests || status=1 ;;
    smoke) smoke ;;
    sanitize) sanitize || status=1 ;;
    bench)
      if [ $# -gt 0 ] && [[ $1 != build && $1 != test && $1 != smoke && $1 != sanitize && $1 != bench ]]; then
        bench "$1" || status=1
        shift
      else
        bench || status=1
      fi ;;
    *) say "unknown step '$step' (pack, build, test, smoke, sanitize, bench [MODELS])"; exit 2 ;;
  esac
done
exit $status
