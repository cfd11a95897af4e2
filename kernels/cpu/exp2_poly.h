// 2^f for |f| <= 1/2 over a vector type (the attention kernels' Vec: set1, fmadd): the part of their exp2 that
// every instruction set shares; each adds its own range reduction and 2^n.
#pragma once

namespace qs::cpu {

// Taylor polynomial of 2^f to degree 6 (relative error < 2e-7 on |f| <= 1/2).
template <class Vec>
inline typename Vec::R exp2_fraction(typename Vec::R f) {
  typename Vec::R p = Vec::set1(1.5403530393381606e-4f);
  p = Vec::fmadd(p, f, Vec::set1(1.3333558146428443e-3f));
  p = Vec::fmadd(p, f, Vec::set1(9.6181291076284772e-3f));
  p = Vec::fmadd(p, f, Vec::set1(5.5504108664821580e-2f));
  p = Vec::fmadd(p, f, Vec::set1(2.4022650695910071e-1f));
  p = Vec::fmadd(p, f, Vec::set1(6.9314718055994531e-1f));
  return Vec::fmadd(p, f, Vec::set1(1.0f));
}

}  // namespace qs::cpu
