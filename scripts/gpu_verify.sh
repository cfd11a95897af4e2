#!/usr/bin/env bash
# One command per step for verifying the CUDA backend on a GPU machine (the device tool: a bare image with nvcc,
# CMake, PyTorch and transformers, but none of our apt libraries and no network). See docs/CUDA.md.
#
# The one-call plan (issue 10: 15 minutes of GPU time in all, one command of at most 10):
#   scripts/gpu_verify.sh bundle               HERE: build quantserve and qs_cuda_tests for sm_90 (QUANTSERVE_MINIMAL,
#                                              build-gpu-bundle/) and copy them with the non-system libraries they
#                                              need into gpu-bundle/bundle.tar.xz, and the build dependencies
#                                              (pack) into gpu-bundle/deps.tgz for a fallback build there
#                                              (git-ignored; the device call carries the folder)
#   scripts/gpu_verify.sh check                HERE: the dry run: the bundle is complete, current and starts, what
#                                              travels is under 64 MiB, and `all` runs end to end here (its GPU tests
#                                              skip) leaving at most 8 files
#   scripts/gpu_verify.sh all                  THERE: everything in one command of at most QS_BUDGET_S (420) seconds:
#                                              env + nvidia-smi, the prebuilt binaries (built there only if they cannot
#                                              start), every gpu test with its own timeout (the int8 path report
#                                              among them), compute-sanitizer memcheck on the attention, CUDA-graph
#                                              and int8 GEMM tests, logits against transformers at GPT-2-small and
#                                              Pythia-410m shapes, the benchmark; whatever it has when a step fails,
#                                              hangs or runs out of time stays in $OUT (at most 8 files)
#     run(command="OUT=$OUT QS_COMMIT=<sha> bash scripts/gpu_verify.sh all", carry=["gpu-bundle"], timeout_s=480)
#
# The steps one at a time (the older plan; each builds there first when build-gpu is missing):
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
DEPS_TGZ=${QS_DEPS_TGZ:-$ROOT/.gpu-deps.tgz}   # `all` uses the bundle's copy, gpu-bundle/deps.tgz
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

# ---- the one-call plan ----------------------------------------------------------------------------------------

BUNDLE=$ROOT/gpu-bundle
BUNDLE_BUILD=$ROOT/build-gpu-bundle
# Libraries the bundle (gpu-bundle/bundle.tar.xz: bin/, lib/, COMMIT) leaves to the machine: glibc's (they must be the system's own), the driver's, and cuBLAS
# (hundreds of MB; the GPU image has it, in the toolkit or its nvidia-cublas wheel: setup_env finds it).
SYSTEM_LIBS='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libresolv|libcuda|libcublas|libcublasLt)\.so'
MAX_TRAVEL_BYTES=$((64 << 20))

bundle() {
  say "building quantserve and qs_cuda_tests for sm_90 in $BUNDLE_BUILD"
  cmake -S "$ROOT" -B "$BUNDLE_BUILD" -DCMAKE_BUILD_TYPE=Release -DQUANTSERVE_CUDA=ON -DQUANTSERVE_MINIMAL=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE=PRE_TEST >/dev/null || exit 1
  cmake --build "$BUNDLE_BUILD" -j"$JOBS" --target quantserve qs_cuda_tests >/dev/null || exit 1
  local stage=$BUNDLE_BUILD/stage lib
  rm -rf "$stage" "$BUNDLE"
  mkdir -p "$stage/bin" "$stage/lib" "$BUNDLE"
  cp "$BUNDLE_BUILD/server/quantserve" "$BUNDLE_BUILD/tests/qs_cuda_tests" "$stage/bin/"
  strip --strip-unneeded "$stage"/bin/*
  for lib in $(ldd "$stage"/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
    basename "$lib" | grep -Eq "$SYSTEM_LIBS" || cp -L "$lib" "$stage/lib/"
  done
  git -C "$ROOT" rev-parse HEAD > "$BUNDLE/COMMIT"
  git -C "$ROOT" diff --quiet HEAD -- . || echo "dirty" >> "$BUNDLE/COMMIT"
  cp "$BUNDLE/COMMIT" "$stage/"
  # xz: oneDNN alone is 38 MB, 62 of the 64 MiB that may travel; packed, the bundle is about 9 MB.
  tar -C "$stage" -cf - bin lib COMMIT | xz -T"$JOBS" -6 > "$BUNDLE/bundle.tar.xz"
  # The build dependencies too (pack), for the fallback build there when the prebuilt binaries cannot start.
  QS_DEPS_TGZ=$BUNDLE/deps.tgz bash "$ROOT/scripts/gpu_verify.sh" pack || exit 1
  say "wrote $BUNDLE/bundle.tar.xz ($(du -h "$BUNDLE/bundle.tar.xz" | cut -f1); $(du -sh "$stage" | cut -f1) unpacked): $(ls "$stage/lib" | tr '\n' ' ')"
}

# The bundle unpacked into $1: STAGE/bin and STAGE/lib.
unpack() {
  STAGE=$1
  rm -rf "$STAGE" && mkdir -p "$STAGE" && xz -dc "$BUNDLE/bundle.tar.xz" | tar -C "$STAGE" -xf -
}

# Bytes that travel to the device: tracked files, untracked ones git does not ignore, and the carried bundle.
travel_bytes() {
  { git -C "$ROOT" ls-files -z; git -C "$ROOT" ls-files -z --others --exclude-standard; } |
    (cd "$ROOT" && xargs -0 stat -c %s 2>/dev/null) | awk '{s += $1} END {print s + 0}'
}

check() {
  local fail=0 head bytes missing dry files
  [ -s "$BUNDLE/bundle.tar.xz" ] && [ -s "$BUNDLE/deps.tgz" ] ||
    { say "check: no bundle: run scripts/gpu_verify.sh bundle"; return 1; }
  head=$(git -C "$ROOT" rev-parse HEAD)
  if [ "$(head -1 "$BUNDLE/COMMIT")" != "$head" ] || grep -q dirty "$BUNDLE/COMMIT"; then
    say "check: the bundle is of $(tr '\n' ' ' < "$BUNDLE/COMMIT"), HEAD is $head: run bundle again"; fail=1
  fi
  unpack "$(mktemp -d)"
  missing=$(LD_LIBRARY_PATH=$STAGE/lib ldd "$STAGE"/bin/* | awk '/not found/ {print $1}' | sort -u |
            grep -Ev "$SYSTEM_LIBS" || true)
  [ -z "$missing" ] || { say "check: the bundle lacks $missing"; fail=1; }
  rm -rf "$STAGE"
  bytes=$(( $(travel_bytes) + $(du -sb "$BUNDLE" | cut -f1) ))
  say "check: $((bytes >> 20)) MiB would travel (limit $((MAX_TRAVEL_BYTES >> 20)))"
  [ "$bytes" -lt "$MAX_TRAVEL_BYTES" ] || fail=1
  # The dry run: the whole plan here, where every GPU test skips and there is no GPU to benchmark.
  dry=$(mktemp -d)
  OUT=$dry QS_GPU_DRY=1 QS_BUDGET_S=300 bash "$ROOT/scripts/gpu_verify.sh" all || { say "check: all failed"; fail=1; }
  files=$(find "$dry" -type f | wc -l)
  say "check: all left $files files: $(cd "$dry" && ls | tr '\n' ' ')"
  [ "$files" -le 8 ] || { say "check: more than 8 files come back"; fail=1; }
  grep -q "tests: .* passed" "$dry/summary.txt" || { say "check: no test ran"; fail=1; }
  grep -q "binaries: /tmp/qs-gpu-bundle" "$dry/summary.txt" || { say "check: the prebuilt binaries did not start"; fail=1; }
  rm -rf "$dry"
  [ $fail = 0 ] && say "check: ready" || say "check: NOT ready"
  return $fail
}

# One gtest test in its own process under its own timeout: "PASS|SKIP|TIMEOUT|FAIL(rc) NAME SECONDS", its output in
# $OUT/.t/NAME.log ('/' of parameterised names as '_').
one_test() {
  local name=$1 t0=$SECONDS rc state=PASS log
  log="$OUT/.t/${name//\//_}.log"
  timeout "$PER_TEST_S" "$tests" --gtest_filter="$name" > "$log" 2>&1
  rc=$?
  if [ $rc = 124 ]; then state=TIMEOUT; elif [ $rc != 0 ]; then state="FAIL($rc)";
  elif grep -q "SKIPPED \] 1 test" "$log"; then state=SKIP; fi
  echo "$state $name $((SECONDS - t0))s"
}

# The plan's clock: seconds left of QS_BUDGET_S since `all` began.
left() { echo $(( ${QS_BUDGET_S:-420} - (SECONDS - ALL_T0) )); }
note() { echo "$*" | tee -a "$OUT/summary.txt" >&2; }
# QS_SKIP=tests,logits,sanitize,bench (any of them): a rerun that spends the budget on what is left to do.
skip() { [[ ",${QS_SKIP:-}," == *",$1,"* ]]; }

all() {
  ALL_T0=$SECONDS
  export OUT
  : > "$OUT/summary.txt"
  [ -s "$BUNDLE/deps.tgz" ] && export QS_DEPS_TGZ=$BUNDLE/deps.tgz && DEPS_TGZ=$QS_DEPS_TGZ   # for a fallback build
  setup_env
  STAGE=/nonexistent
  [ -s "$BUNDLE/bundle.tar.xz" ] && unpack /tmp/qs-gpu-bundle
  export LD_LIBRARY_PATH=$STAGE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export QS_SOURCE_DIR=$ROOT   # the tests' fixtures, wherever the tree is on this machine
  write_env
  {
    echo "bundle: $(tr '\n' ' ' < "$STAGE/COMMIT" 2>/dev/null || echo none)"
    ldd "$STAGE"/bin/* 2>&1
  } >> "$OUT/env.txt"
  # The prebuilt binaries if they start here; else a build (its log is the 8th file).
  local qs=$STAGE/bin/quantserve tests=$STAGE/bin/qs_cuda_tests
  if ! timeout 60 "$tests" --gtest_list_tests > /dev/null 2>> "$OUT/env.txt" ||
     ! timeout 60 "$qs" --help > /dev/null 2>> "$OUT/env.txt"; then
    note "prebuilt binaries do not start here: building ($(left) s left)"
    BUILD_TIMEOUT=$(( $(left) - 150 ))
    if [ "$BUILD_TIMEOUT" -gt 60 ] && timeout "$BUILD_TIMEOUT" bash "$ROOT/scripts/gpu_verify.sh" build; then
      qs=$BUILD/server/quantserve tests=$BUILD/tests/qs_cuda_tests
    else
      note "build failed or did not fit; see build.log"; return 1
    fi
  fi
  note "binaries: $qs, $tests ($(left) s left)"

  # Every test its own process and timeout, four at a time (one GPU has room for them).
  local list=$OUT/.tests fail=0
  if skip tests; then note "tests: skipped (QS_SKIP)"; else
    "$tests" --gtest_list_tests | awk '/^[^ ]/ {suite = $1} /^  / {print suite $1}' > "$list"
    mkdir -p "$OUT/.t"
    PER_TEST_S=$(( $(left) < 240 ? 60 : 120 ))
    export tests PER_TEST_S QS_INT8_PATHS_JSON=$OUT/int8_paths.json   # CudaInt8Paths writes its report there
    export -f one_test
    xargs -P 4 -I{} bash -c 'one_test "$1"' _ {} < "$list" > "$OUT/.results"
    {
      sort -k2 "$OUT/.results"
      for f in "$OUT"/.t/*.log; do
        grep -q "PASSED  \] 1 test\|SKIPPED \] 1 test" "$f" && ! grep -q "\[int8 path\]" "$f" && continue
        echo "===== $(basename "$f" .log)"; cat "$f"
      done
    } > "$OUT/tests.log"
    local pass skipped
    pass=$(grep -c '^PASS' "$OUT/.results"); skipped=$(grep -c '^SKIP' "$OUT/.results")
    fail=$(grep -vc '^PASS\|^SKIP' "$OUT/.results")
    note "tests: $pass passed, $skipped skipped, $fail failed or timed out ($(left) s left)"
    rm -rf "$OUT/.t" "$OUT/.tests" "$OUT/.results"
  fi

  # quantserve's logits against transformers' fp32 on GPT-2-small and Pythia-410m shapes, every precision.
  if [ -n "${QS_GPU_DRY:-}" ] || skip logits; then
    note "logits: skipped (dry run or QS_SKIP)"
  elif [ "$(left)" -gt 200 ]; then
    timeout 150 env PYTHONUNBUFFERED=1 python3 "$ROOT/bench/logits_vs_transformers.py" --quantserve "$qs" \
      --device cuda --out "$OUT/logits.json" 2>&1 | grep -v "it/s" | tee -a "$OUT/summary.txt" >&2
    note "logits: rc=${PIPESTATUS[0]} ($(left) s left)"
  else
    note "logits: skipped ($(left) s left)"
  fi

  # compute-sanitizer memcheck: attention, CUDA graphs, int8 GEMMs (not on gVisor, where it cannot attach); its
  # log goes to the end of tests.log (8 files at most come back).
  if [ -n "${QS_GPU_DRY:-}" ] || skip sanitize || ! command -v compute-sanitizer > /dev/null; then
    note "sanitize: skipped (dry run, QS_SKIP or no compute-sanitizer here)"
  elif [ "$(left)" -gt 150 ]; then
    timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 "$tests" \
      --gtest_filter='*Attention*:*Int8*:*Linear*:*DecodeStepsWithGraphs*/gpt2:*DecodeStepsWithGraphs*/llama' \
      > "$OUT/.sanitize" 2>&1
    note "sanitize: rc=$? ($(tail -1 "$OUT/.sanitize" | cut -c1-120)) ($(left) s left)"
    { echo "===== compute-sanitizer memcheck"; cat "$OUT/.sanitize"; } >> "$OUT/tests.log"
    rm -f "$OUT/.sanitize"
  else
    note "sanitize: skipped ($(left) s left)"
  fi

  # The benchmark: whatever time is left, less a margin for the summary.
  if [ -n "${QS_GPU_DRY:-}" ] || skip bench; then
    note "bench: skipped (dry run or QS_SKIP)"
  elif [ "$(left)" -gt 90 ]; then
    timeout $(( $(left) - 20 )) env PYTHONUNBUFFERED=1 python3 "$ROOT/bench/gpu_bench.py" --quantserve "$qs" \
      --models gpt2-small,pythia-1.4b > "$OUT/bench.log" 2>&1
    note "bench: rc=$? ($(left) s left)"
    find "$ROOT/bench/results" -name 'gpu_*.json' -newer "$OUT/summary.txt" -exec cp {} "$OUT/" \;
  else
    note "bench: skipped ($(left) s left)"
  fi
  note "all: done in $((SECONDS - ALL_T0)) s"
  [ "$fail" = 0 ]
}

[ $# -gt 0 ] || set -- build test
status=0
while [ $# -gt 0 ]; do
  step=$1
  shift
  case $step in
    pack) pack ;;
    bundle) bundle ;;
    check) check || status=1 ;;
    all) all || status=1 ;;
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
    *) say "unknown step '$step' (bundle, check, all; pack, build, test, smoke, sanitize, bench [MODELS])"; exit 2 ;;
  esac
done
exit $status
