#include "kernels/cpu/gemm.h"

#include <cblas.h>

#include <mutex>

// OpenBLAS's thread count, when the BLAS linked is OpenBLAS (weak: absent from other BLAS).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace mira::cpu {

namespace {

// One OpenBLAS thread per call, always. Every product is already split into blocks fixed by
// the shapes and run on the CPU thread pool (kernels/cpu/parallel.h), so the results do not
// depend on any thread count; OpenBLAS's own threads would split the blocks again (they only
// competed with the pool: bench/RESULTS.md), and its results can change with its thread count
// (a (8 x 10000) x (10000 x 300) product did: tests/test_ops.cpp).
void blas_one_thread() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (openblas_set_num_threads != nullptr) openblas_set_num_threads(1);
  });
}

}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  blas_one_thread();
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K,
              alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                  const double* B, int ldb, double beta, double* C, int ldc) {
  blas_one_thread();
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K,
              alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace mira::cpu
