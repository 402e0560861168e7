// Row-major GEMM on OpenBLAS: C = alpha * op(A) op(B) + beta * C, op(A) is (M, K), op(B) (K, N).
#pragma once

namespace mira::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);

}  // namespace mira::cpu
