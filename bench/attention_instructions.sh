#!/usr/bin/env bash
# Instructions executed inside the CPU attention (callgrind, counting only attention_paged_forward) for two
# commits' kernels on the same driver (bench/attention_instructions.cpp): a machine's load changes times, not these.
#   bash bench/attention_instructions.sh BEFORE_REV AFTER_REV OUT.json   (needs build/ with libqs_kernels.a)
set -euo pipefail
before=$1 after=$2 out=$3
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags=(-std=c++20 -O3 -DNDEBUG -fopenmp -mavx2 -mfma -mf16c)   # each tree its own headers (-I"$d")
avx512=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni)
for rev in "$before" "$after"; do
  d=$work/$rev
  mkdir -p "$d/kernels/cpu"
  git -C "$root" archive "$rev" kernels | tar -x -C "$d"
  g++ "${flags[@]}" -I"$d" -c "$d/kernels/cpu/attention_paged.cpp" -o "$d/paged.o"
  g++ "${flags[@]}" -I"$d" -c "$d/kernels/cpu/attention_avx2.cpp" -o "$d/avx2.o"
  g++ "${flags[@]}" "${avx512[@]}" -I"$d" -c "$d/kernels/cpu/attention_avx512.cpp" -o "$d/avx512.o"
  g++ "${flags[@]}" -I"$d" "$root/bench/attention_instructions.cpp" "$d/paged.o" "$d/avx2.o" "$d/avx512.o" \
    "$root/build/kernels/libqs_kernels.a" -o "$d/driver"
done
results=()
for point in "128 64" "2000 0" "2000 16"; do
  for threads in 1; do   # --toggle-collect counts the calling thread only: more threads would hide their work
    for rev in "$before" "$after"; do
      log=$work/cg.log
      OMP_NUM_THREADS=$threads valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        --toggle-collect='qs::cpu::attention_paged_forward*' "$work/$rev/driver" $point > /dev/null 2> "$log"
      ir=$(grep -o 'Collected : [0-9]*' "$log" | grep -o '[0-9]*$')
      set -- $point
      results+=("{\"rev\": \"$rev\", \"prompt_tokens\": $1, \"decode_steps\": $2, \"threads\": $threads, \"instructions\": $ir}")
      echo "${results[-1]}"
    done
  done
done
{
  echo '{"tool": "bench/attention_instructions.sh", "counts": "callgrind Ir inside attention_paged_forward (all threads)",'
  echo " \"shape\": \"NH 9, NKV 3, HD 64, BS 16, fp16 KV, prefill passes of 256\", \"before\": \"$before\", \"after\": \"$after\","
  echo ' "results": ['
  (IFS=$'\n'; echo "${results[*]}" | sed '$!s/$/,/')
  echo ' ]}'
} > "$out"
