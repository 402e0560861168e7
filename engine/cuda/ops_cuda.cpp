// CUDA implementations of engine/cuda_ops.h: dtype dispatch (f32, bf16) onto the kernels in
// kernels/cuda/, cuDNN for convolutions and cuBLAS for the linear layers, all on the
// CudaContext stream.
//
// Convolutions. NHWC tensor descriptors and NHWC (= OHWI, KRSC) filters, f32 compute for both
// f32 and bf16 data. Each (direction, dtype, device, shape) gets a plan (descriptors, algorithm,
// workspace size) built once and cached for the life of the process. The algorithm is the
// first that cuDNN's heuristics rank (or, with MIRA_CUDNN_BENCHMARK=1, the fastest that
// cudnnFind* measures) whose workspace fits MIRA_CUDNN_WORKSPACE_MB (default 512). f32 convs
// run with CUDNN_FMA_MATH: CUDNN_DEFAULT_MATH would let Ampere+ GPUs use TF32, whose 10-bit
// mantissa breaks the CUDA-vs-CPU comparisons; bf16 convs use tensor cores. MIRA_DETERMINISTIC=1
// restricts every direction to deterministic algorithms (by default the backward passes may
// pick ones that accumulate with atomics, as PyTorch's default does).
//
// Linear. Row-major y (N, O) = x (N, I) w^T (O, I) is column-major y^T = w x^T, one
// cublasGemmEx with CUBLAS_COMPUTE_32F (no TF32 for f32; bf16 inputs on tensor cores). Gradient
// GEMMs may write f32 gradients from bf16 operands. Bias add and bias gradient are kernels.
//
// Statistics (BN mean/var/invstd/sums/running stats, l2 norms, lse, per-row losses, the loss
// seed) are f32 in the kernels; a tensor of another float dtype is used through an f32 copy.
#include <cuda_bf16.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/cuda/context.h"
#include "engine/cuda_backend.h"
#include "engine/cuda_ops.h"
#include "engine/env_switch.h"
#include "kernels/cuda/nn.cuh"
#include "kernels/cuda/pointwise.cuh"

namespace mira::cuda {

namespace {

using bf16 = __nv_bfloat16;

template <typename F>
void dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(bf16{}); return;
    default: MIRA_FAIL(op, ": CUDA kernels take f32 or bf16 tensors, got ", dtype_name(t));
  }
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}
template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw()) : nullptr;
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  MIRA_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch, ", a.str(), " vs ", b.str());
}

// f32 tensors are used in place; other float tensors through an f32 copy (copy_in: with their
// values), written back by commit_f32.
Tensor f32_view(const Tensor& t, bool copy_in) {
  if (!t.defined() || t.dtype() == DType::F32) return t;
  MIRA_CHECK(t.dtype() == DType::BF16, "statistics must be f32 or bf16, got ", t.str());
  return copy_in ? t.to(DType::F32) : Tensor::empty(t.shape(), DType::F32, t.device());
}
void commit_f32(const Tensor& dst, const Tensor& tmp) {
  if (!dst.defined() || tmp.storage() == dst.storage()) return;
  Tensor d = dst;
  d.copy_(tmp);
}
// A tensor in dtype t (itself when it already is).
Tensor in_dtype(const Tensor& x, DType t) { return x.dtype() == t ? x : x.to(t); }

// Library calls get the same MIRA_SYNC_CHECK treatment as kernel launches.
void after_library_call(cudaStream_t stream) { MIRA_CUDA_LAUNCH_CHECK(stream); }

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && v[0] == '1';
}

// ---------------------------------------------------------------------------------------------
// cuDNN descriptors (RAII) and the plan cache

class TensorDesc {
 public:
  TensorDesc() { MIRA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_)); }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d_); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  cudnnTensorDescriptor_t get() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

class FilterDesc {
 public:
  FilterDesc() { MIRA_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d_)); }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d_); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
  cudnnFilterDescriptor_t get() const { return d_; }

 private:
  cudnnFilterDescriptor_t d_ = nullptr;
};

class ConvDesc {
 public:
  ConvDesc() { MIRA_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d_)); }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d_); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
  cudnnConvolutionDescriptor_t get() const { return d_; }

 private:
  cudnnConvolutionDescriptor_t d_ = nullptr;
};

enum class ConvDir { Fwd = 0, BwdData = 1, BwdFilter = 2 };
const char* dir_name(ConvDir d) {
  return d == ConvDir::Fwd ? "forward" : d == ConvDir::BwdData ? "backward-data" : "backward-filter";
}

struct ConvPlan {
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
  cudnnConvolutionFwdAlgo_t fwd_algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  cudnnConvolutionBwdDataAlgo_t bwd_data_algo = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
  size_t workspace = 0;
};

using ConvKey = std::array<int, 14>;

cudnnDataType_t cudnn_type(DType t) {
  switch (t) {
    case DType::F32: return CUDNN_DATA_FLOAT;
    case DType::BF16: return CUDNN_DATA_BFLOAT16;
    default: MIRA_FAIL("cuDNN convolutions take f32 or bf16, got ", dtype_name(t));
  }
}

size_t workspace_cap() {
  static const size_t cap = [] {
    const char* v = std::getenv("MIRA_CUDNN_WORKSPACE_MB");
    const unsigned long long mb = v ? std::strtoull(v, nullptr, 10) : 512ull;
    return static_cast<size_t>(mb) << 20;
  }();
  return cap;
}

std::string shape_str(const ConvShape& s) {
  return detail::concat("N=", s.N, " H=", s.H, " W=", s.W, " C=", s.C, " K=", s.K, " R=", s.R, " S=", s.S,
                        " stride=", s.stride, " pad=", s.pad);
}

// A candidate is usable when cuDNN supports it, it is deterministic if that was asked for, and
// an f32 conv would not run on TF32 tensor cores.
template <typename Perf>
bool usable(const Perf& p, DType t, bool deterministic) {
  if (p.status != CUDNN_STATUS_SUCCESS) return false;
  if (deterministic && p.determinism != CUDNN_DETERMINISTIC) return false;
  if (t == DType::F32 && (p.mathType == CUDNN_TENSOR_OP_MATH || p.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
    return false;
  return true;
}

// Takes the first usable candidate (they come best first) whose exact workspace, asked for with
// the math type it will run with, is within `cap`. Sets the plan's math type and workspace.
template <typename Perf, typename WsQuery>
bool choose(const std::vector<Perf>& cands, DType t, bool deterministic, size_t cap, ConvPlan& plan,
            WsQuery ws_query, decltype(Perf{}.algo)* algo) {
  for (const Perf& p : cands) {
    if (!usable(p, t, deterministic)) continue;
    const cudnnMathType_t math = t == DType::F32 ? CUDNN_FMA_MATH : p.mathType;
    if (cudnnSetConvolutionMathType(plan.conv.get(), math) != CUDNN_STATUS_SUCCESS) continue;
    size_t ws = 0;
    if (ws_query(p.algo, &ws) != CUDNN_STATUS_SUCCESS || ws > cap) continue;
    *algo = p.algo;
    plan.workspace = ws;
    return true;
  }
  return false;
}

// Scratch for cudnnFind*Ex: the result tensor (overwritten while timing, so never the caller's
// output, which backward passes may accumulate into) and a workspace of up to half the free
// memory.
struct FindScratch {
  Tensor out, ws;
  size_t ws_bytes = 0;
  FindScratch(const Shape& out_shape, DType t, int device, size_t cap) {
    out = Tensor::empty(out_shape, t, Device::cuda(device));
    size_t free_b = 0, total_b = 0;
    MIRA_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    ws_bytes = std::min(cap, free_b / 2);
    ws = Tensor::empty(Shape{static_cast<int64_t>(ws_bytes)}, DType::U8, Device::cuda(device));
  }
};

// a, b: the operands (fwd: x, w; bwd data: dy, w; bwd filter: x, dy), only read when
// benchmarking.
const ConvPlan& conv_plan(ConvDir dir, const ConvShape& s, DType t, const void* a, const void* b) {
  static std::mutex mu;
  static std::map<ConvKey, std::unique_ptr<ConvPlan>> cache;
  CudaContext& ctx = CudaContext::get();
  const ConvKey key{static_cast<int>(dir), static_cast<int>(t), ctx.device(), s.N, s.H, s.W, s.C, s.K, s.R, s.S,
                    s.stride, s.pad, s.P, s.Q};
  std::lock_guard<std::mutex> lock(mu);
  auto found = cache.find(key);
  if (found != cache.end()) return *found->second;

  auto plan = std::make_unique<ConvPlan>();
  const cudnnDataType_t dt = cudnn_type(t);
  MIRA_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->x.get(), CUDNN_TENSOR_NHWC, dt, s.N, s.C, s.H, s.W));
  MIRA_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->y.get(), CUDNN_TENSOR_NHWC, dt, s.N, s.K, s.P, s.Q));
  MIRA_CUDNN_CHECK(cudnnSetFilter4dDescriptor(plan->w.get(), dt, CUDNN_TENSOR_NHWC, s.K, s.C, s.R, s.S));
  MIRA_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(plan->conv.get(), s.pad, s.pad, s.stride, s.stride, 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  MIRA_CUDNN_CHECK(
      cudnnSetConvolutionMathType(plan->conv.get(), t == DType::F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));

  cudnnHandle_t h = ctx.cudnn();
  const bool bench = env_flag("MIRA_CUDNN_BENCHMARK");
  const bool det = env_flag("MIRA_DETERMINISTIC");
  const size_t cap = workspace_cap();
  const Shape y_shape{s.N, s.P, s.Q, s.K}, x_shape{s.N, s.H, s.W, s.C}, w_shape{s.K, s.R, s.S, s.C};
  bool ok = false;
  int n = 0, got = 0;
  ConvPlan& p = *plan;

  // bf16: tensor-core algorithms first; should cuDNN have none for a shape (3 input channels,
  // the stem, is the known risk), the search is repeated under the default math.
  const std::vector<cudnnMathType_t> maths =
      t == DType::F32 ? std::vector<cudnnMathType_t>{CUDNN_FMA_MATH}
                      : std::vector<cudnnMathType_t>{CUDNN_TENSOR_OP_MATH, CUDNN_DEFAULT_MATH};
  for (size_t mi = 0; mi < maths.size() && !ok; ++mi) {
    MIRA_CUDNN_CHECK(cudnnSetConvolutionMathType(plan->conv.get(), maths[mi]));
    if (dir == ConvDir::Fwd) {
      MIRA_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &n));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(n);
      if (bench) {
        FindScratch scratch(y_shape, t, ctx.device(), cap);
        MIRA_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, p.x.get(), a, p.w.get(), b, p.conv.get(), p.y.get(),
                                                                scratch.out.raw(), n, &got, perf.data(),
                                                                scratch.ws.raw(), scratch.ws_bytes));
        MIRA_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
      } else {
        MIRA_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x.get(), p.w.get(), p.conv.get(), p.y.get(), n,
                                                                &got, perf.data()));
      }
      perf.resize(got);
      ok = choose(perf, t, det, cap, p,
                  [&](cudnnConvolutionFwdAlgo_t algo, size_t* ws) {
                    return cudnnGetConvolutionForwardWorkspaceSize(h, p.x.get(), p.w.get(), p.conv.get(), p.y.get(),
                                                                   algo, ws);
                  },
                  &p.fwd_algo);
    } else if (dir == ConvDir::BwdData) {
      MIRA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &n));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(n);
      if (bench) {
        FindScratch scratch(x_shape, t, ctx.device(), cap);
        MIRA_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, p.w.get(), b, p.y.get(), a, p.conv.get(),
                                                                     p.x.get(), scratch.out.raw(), n, &got,
                                                                     perf.data(), scratch.ws.raw(), scratch.ws_bytes));
        MIRA_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
      } else {
        MIRA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p.w.get(), p.y.get(), p.conv.get(), p.x.get(),
                                                                     n, &got, perf.data()));
      }
      perf.resize(got);
      ok = choose(perf, t, det, cap, p,
                  [&](cudnnConvolutionBwdDataAlgo_t algo, size_t* ws) {
                    return cudnnGetConvolutionBackwardDataWorkspaceSize(h, p.w.get(), p.y.get(), p.conv.get(),
                                                                        p.x.get(), algo, ws);
                  },
                  &p.bwd_data_algo);
    } else {
      MIRA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &n));
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(n);
      if (bench) {
        FindScratch scratch(w_shape, t, ctx.device(), cap);
        MIRA_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, p.x.get(), a, p.y.get(), b, p.conv.get(),
                                                                       p.w.get(), scratch.out.raw(), n, &got,
                                                                       perf.data(), scratch.ws.raw(), scratch.ws_bytes));
        MIRA_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
      } else {
        MIRA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x.get(), p.y.get(), p.conv.get(),
                                                                       p.w.get(), n, &got, perf.data()));
      }
      perf.resize(got);
      ok = choose(perf, t, det, cap, p,
                  [&](cudnnConvolutionBwdFilterAlgo_t algo, size_t* ws) {
                    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x.get(), p.y.get(), p.conv.get(),
                                                                          p.w.get(), algo, ws);
                  },
                  &p.bwd_filter_algo);
    }
  }
  MIRA_CHECK(ok, "no usable cuDNN ", dir_name(dir), " algorithm for ", dtype_name(t), " conv ", shape_str(s),
             " within a workspace of ", cap >> 20, " MiB", det ? " (deterministic only)" : "");
  return *cache.emplace(key, std::move(plan)).first->second;
}

void check_conv(const ConvShape& s, const Tensor& a, const Tensor& b, const Tensor& out, const char* op) {
  MIRA_CHECK(a.is_cuda() && b.is_cuda() && out.is_cuda(), op, ": tensors must be on CUDA");
  MIRA_CHECK(a.dtype() == b.dtype() && a.dtype() == out.dtype(), op, ": dtype mismatch ", a.str(), ", ", b.str(),
             ", ", out.str());
  MIRA_CHECK(a.dtype() == DType::F32 || a.dtype() == DType::BF16, op, ": f32 or bf16 only, got ", a.str());
  MIRA_CHECK(s.P > 0 && s.Q > 0, op, ": empty output for ", shape_str(s));
}

// ---------------------------------------------------------------------------------------------
// cuBLAS

cudaDataType_t blas_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    default: MIRA_FAIL("cuBLAS GEMMs take f32 or bf16, got ", dtype_name(t));
  }
}

// Column-major C (m, n) = op(A) op(B) + beta C, f32 accumulation.
void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const Tensor& A, int lda, const Tensor& B,
          int ldb, float beta, const Tensor& C, int ldc) {
  if (m == 0 || n == 0) return;
  CudaContext& ctx = CudaContext::get();
  if (k == 0) {  // empty sum: C = beta C
    if (beta == 0.f) memset_zero(C.raw(), C.nbytes());
    return;
  }
  const float alpha = 1.f;
  MIRA_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), ta, tb, m, n, k, &alpha, A.raw(), blas_type(A.dtype()), lda, B.raw(),
                                 blas_type(B.dtype()), ldb, &beta, C.raw(), blas_type(C.dtype()), ldc,
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  after_library_call(ctx.stream());
}

void check_gemm_out(const Tensor& in, const Tensor& out, const char* op) {
  MIRA_CHECK(out.dtype() == in.dtype() || out.dtype() == DType::F32, op, ": output ", out.str(),
             " must be f32 or the inputs' dtype ", dtype_name(in.dtype()));
}

int as_int(int64_t v, const char* what) {
  MIRA_CHECK(v >= 0 && v <= INT32_MAX, what, " = ", v, " exceeds the 32-bit range of the kernels");
  return static_cast<int>(v);
}

// Rows x channels view of a tensor whose last dimension is the channel.
void rows_cols(const Tensor& x, int64_t* M, int* C) {
  MIRA_CHECK(x.ndim() >= 1, "a tensor with channels needs at least one dimension, got ", x.str());
  *C = as_int(x.dim(-1), "channels");
  *M = *C > 0 ? x.numel() / *C : 0;
}

// A 1x1, stride-1, unpadded convolution of NHWC data is a matrix product over the N*H*W pixel
// rows, with the OHWI filters as a (K, C) matrix: cuBLAS runs it (the bottleneck blocks' 1x1
// convolutions). On an H200 the cuDNN algorithms its heuristics picked for these shapes in bf16
// ran at 2 TFLOP/s or less in backward-filter (bench/RESULTS.md). MIRA_CUDNN_POINTWISE=1 keeps them
// on cuDNN (for comparisons), as do those of more than 2^31 - 1 rows.
bool pointwise(const ConvShape& s) {
  static const bool off = env_flag("MIRA_CUDNN_POINTWISE");
  return !off && s.R == 1 && s.S == 1 && s.stride == 1 && s.pad == 0 &&
         static_cast<int64_t>(s.N) * s.H * s.W <= INT32_MAX;  // cuBLAS's int dimensions; else cuDNN
}

int pointwise_rows(const ConvShape& s) {
  return as_int(static_cast<int64_t>(s.N) * s.H * s.W, "rows (N*H*W) of a 1x1 convolution");
}

// Small feature maps (the local crops' deeper stages, ResNet-18 at 32 px) as im2col + one
// cuBLAS product: on an H200 the cuDNN calls for 3x3 convolutions on maps of 24 x 24 and less
// took 50-180 us each whatever their size (15-60 TFLOP/s), against 30 us at 300-490 TFLOP/s on
// larger maps (bench/RESULTS.md). Off unless MIRA_CONV_GEMM=1 (or set_conv_gemm) until measured;
// MIRA_CONV_GEMM_MAX_PQ (default 576 = 24 x 24) bounds the output map. C and K multiples of 8
// keep the rows 16-byte aligned for the tensor cores.
EnvSwitch g_conv_gemm("MIRA_CONV_GEMM");
std::atomic<uint64_t> g_conv_gemm_calls{0};

bool conv_as_gemm(const ConvShape& s) {
  static const int64_t max_pq = [] {
    const char* v = std::getenv("MIRA_CONV_GEMM_MAX_PQ");
    return v ? std::strtoll(v, nullptr, 10) : 576LL;
  }();
  if (!g_conv_gemm.on() || s.is_pointwise() || s.C % 8 != 0 || s.K % 8 != 0) return false;
  const int64_t M = static_cast<int64_t>(s.N) * s.P * s.Q, RSC = static_cast<int64_t>(s.R) * s.S * s.C;
  // The temporaries (cols in the input's dtype, the f32 column gradients) at most 256 MiB.
  if (static_cast<int64_t>(s.P) * s.Q > max_pq || M > INT32_MAX || M * RSC > (int64_t{1} << 26)) return false;
  g_conv_gemm_calls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// The im2col matrix of x for s: (N*P*Q, R*S*C) in x's dtype.
Tensor im2col_of(const ConvShape& s, const Tensor& x) {
  Tensor cols = Tensor::empty({static_cast<int64_t>(s.N) * s.P * s.Q, static_cast<int64_t>(s.R) * s.S * s.C},
                              x.dtype(), x.device());
  const cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "im2col", [&](auto tag) {
    using T = decltype(tag);
    gpu::im2col<T>(ptr<T>(x), s.N, s.H, s.W, s.C, s.R, s.S, s.stride, s.pad, s.P, s.Q, ptr<T>(cols), stream);
  });
  return cols;
}

}  // namespace

void set_conv_gemm(bool on) { g_conv_gemm.set(on); }
bool conv_gemm() { return g_conv_gemm.on(); }
uint64_t conv_gemm_calls() { return g_conv_gemm_calls.load(std::memory_order_relaxed); }

// ---------------------------------------------------------------------------------------------
// convolutions

void conv2d_fwd(const ConvShape& s, const Tensor& x, const Tensor& w, Tensor& y) {
  check_conv(s, x, w, y, "conv2d_fwd");
  if (s.N == 0) return;
  if (pointwise(s)) {  // y (M, K) = x (M, C) w (K, C)^T
    const int M = pointwise_rows(s);
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, s.K, M, s.C, w, s.C, x, s.C, 0.f, y, s.K);
    return;
  }
  if (conv_as_gemm(s)) {  // y (M, K) = cols (M, RSC) w (K, RSC)^T
    const Tensor cols = im2col_of(s, x);
    const int M = static_cast<int>(cols.dim(0)), RSC = static_cast<int>(cols.dim(1));
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, s.K, M, RSC, w, RSC, cols, RSC, 0.f, y, s.K);
    return;
  }
  CudaContext& ctx = CudaContext::get();
  const ConvPlan& p = conv_plan(ConvDir::Fwd, s, x.dtype(), x.raw(), w.raw());
  void* ws = ctx.workspace(p.workspace);
  const float alpha = 1.f, beta = 0.f;
  MIRA_CUDNN_CHECK(cudnnConvolutionForward(ctx.cudnn(), &alpha, p.x.get(), x.raw(), p.w.get(), w.raw(), p.conv.get(),
                                           p.fwd_algo, ws, p.workspace, &beta, p.y.get(), y.raw()));
  after_library_call(ctx.stream());
}

void conv2d_bwd_data(const ConvShape& s, const Tensor& dy, const Tensor& w, Tensor& dx, bool accumulate) {
  check_conv(s, dy, w, dx, "conv2d_bwd_data");
  if (s.N == 0) return;
  if (pointwise(s)) {  // dx (M, C) = dy (M, K) w (K, C)
    const int M = pointwise_rows(s);
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, s.C, M, s.K, w, s.C, dy, s.K, accumulate ? 1.f : 0.f, dx, s.C);
    return;
  }
  if (conv_as_gemm(s)) {  // dcols (M, RSC) = dy (M, K) w (K, RSC) in f32, then summed into dx
    const int M = as_int(static_cast<int64_t>(s.N) * s.P * s.Q, "rows"), RSC = s.R * s.S * s.C;
    Tensor dcols = Tensor::empty({M, RSC}, DType::F32, dx.device());
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, RSC, M, s.K, w, RSC, dy, s.K, 0.f, dcols, RSC);
    const cudaStream_t stream = CudaContext::get().stream();
    dispatch_float(dx.dtype(), "col2im", [&](auto tag) {
      using T = decltype(tag);
      gpu::col2im<T>(ptr<float>(dcols), s.N, s.H, s.W, s.C, s.R, s.S, s.stride, s.pad, s.P, s.Q, ptr<T>(dx),
                     accumulate, stream);
    });
    return;
  }
  CudaContext& ctx = CudaContext::get();
  const ConvPlan& p = conv_plan(ConvDir::BwdData, s, dy.dtype(), dy.raw(), w.raw());
  void* ws = ctx.workspace(p.workspace);
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  MIRA_CUDNN_CHECK(cudnnConvolutionBackwardData(ctx.cudnn(), &alpha, p.w.get(), w.raw(), p.y.get(), dy.raw(),
                                                p.conv.get(), p.bwd_data_algo, ws, p.workspace, &beta, p.x.get(),
                                                dx.raw()));
  after_library_call(ctx.stream());
}

void conv2d_bwd_filter(const ConvShape& s, const Tensor& dy, const Tensor& x, Tensor& dw, bool accumulate) {
  check_conv(s, dy, x, dw, "conv2d_bwd_filter");
  if (s.N == 0) {
    if (!accumulate) dw.zero_();
    return;
  }
  if (pointwise(s)) {  // dw (K, C) = dy (M, K)^T x (M, C)
    const int M = pointwise_rows(s);
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, s.C, s.K, M, x, s.C, dy, s.K, accumulate ? 1.f : 0.f, dw, s.C);
    return;
  }
  if (conv_as_gemm(s)) {  // dw (K, RSC) = dy (M, K)^T cols (M, RSC)
    const Tensor cols = im2col_of(s, x);
    const int M = static_cast<int>(cols.dim(0)), RSC = static_cast<int>(cols.dim(1));
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, RSC, s.K, M, cols, RSC, dy, s.K, accumulate ? 1.f : 0.f, dw, RSC);
    return;
  }
  CudaContext& ctx = CudaContext::get();
  const ConvPlan& p = conv_plan(ConvDir::BwdFilter, s, x.dtype(), x.raw(), dy.raw());
  void* ws = ctx.workspace(p.workspace);
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  MIRA_CUDNN_CHECK(cudnnConvolutionBackwardFilter(ctx.cudnn(), &alpha, p.x.get(), x.raw(), p.y.get(), dy.raw(),
                                                  p.conv.get(), p.bwd_filter_algo, ws, p.workspace, &beta,
                                                  p.w.get(), dw.raw()));
  after_library_call(ctx.stream());
}

// ---------------------------------------------------------------------------------------------
// linear

void linear_fwd(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  check_same_dtype(x, w, "linear_fwd");
  MIRA_CHECK(y.dtype() == x.dtype(), "linear_fwd: output ", y.str(), " must have the input's dtype");
  const int N = as_int(x.dim(0), "rows"), I = as_int(x.dim(1), "in features"), O = as_int(w.dim(0), "out features");
  gemm(CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, w, I, x, I, 0.f, y, O);
  if (!b.defined() || N == 0) return;
  cudaStream_t stream = CudaContext::get().stream();
  if (y.dtype() == DType::F32) {
    const Tensor b32 = in_dtype(b, DType::F32);
    gpu::bias_add<float, float>(ptr<float>(y), ptr<float>(b32), N, O, stream);
  } else if (b.dtype() == DType::BF16) {
    gpu::bias_add<bf16, bf16>(ptr<bf16>(y), ptr<bf16>(b), N, O, stream);
  } else {
    const Tensor b32 = in_dtype(b, DType::F32);
    gpu::bias_add<bf16, float>(ptr<bf16>(y), ptr<float>(b32), N, O, stream);
  }
}

void linear_bwd_data(const Tensor& dy, const Tensor& w, Tensor& dx, bool accumulate) {
  check_same_dtype(dy, w, "linear_bwd_data");
  check_gemm_out(dy, dx, "linear_bwd_data");
  const int N = as_int(dy.dim(0), "rows"), O = as_int(dy.dim(1), "out features"), I = as_int(w.dim(1), "in features");
  // dx^T (I, N) = w^T (I, O) dy^T (O, N)
  gemm(CUBLAS_OP_N, CUBLAS_OP_N, I, N, O, w, I, dy, O, accumulate ? 1.f : 0.f, dx, I);
}

void linear_bwd_weight(const Tensor& dy, const Tensor& x, Tensor& dw, Tensor& db, bool accumulate) {
  check_same_dtype(dy, x, "linear_bwd_weight");
  check_gemm_out(dy, dw, "linear_bwd_weight");
  const int N = as_int(dy.dim(0), "rows"), O = as_int(dy.dim(1), "out features"), I = as_int(x.dim(1), "in features");
  // dw^T (I, O) = x^T (I, N) dy (N, O)
  gemm(CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, x, I, dy, O, accumulate ? 1.f : 0.f, dw, I);
  if (!db.defined()) return;
  check_gemm_out(dy, db, "linear_bwd_weight (bias)");
  CudaContext& ctx = CudaContext::get();
  void* ws = ctx.workspace(gpu::col_sum_workspace_bytes(N, O));
  if (dy.dtype() == DType::F32) {
    gpu::col_sum<float, float>(ptr<float>(dy), N, O, ptr<float>(db), accumulate, ws, ctx.stream());
  } else if (db.dtype() == DType::F32) {
    gpu::col_sum<bf16, float>(ptr<bf16>(dy), N, O, ptr<float>(db), accumulate, ws, ctx.stream());
  } else {
    gpu::col_sum<bf16, bf16>(ptr<bf16>(dy), N, O, ptr<bf16>(db), accumulate, ws, ctx.stream());
  }
}

// ---------------------------------------------------------------------------------------------
// batch norm

void bn_stats(const Tensor& x, Tensor& mean, Tensor& var) {
  int64_t M = 0;
  int C = 0;
  rows_cols(x, &M, &C);
  MIRA_CHECK(M > 0, "bn_stats: no rows in ", x.str());
  CudaContext& ctx = CudaContext::get();
  Tensor m32 = f32_view(mean, false), v32 = f32_view(var, false);
  void* ws = ctx.workspace(gpu::bn_workspace_bytes(M, C));
  dispatch_float(x.dtype(), "bn_stats", [&](auto tag) {
    using T = decltype(tag);
    gpu::bn_stats<T>(ptr<T>(x), M, C, ptr<float>(m32), ptr<float>(v32), ws, ctx.stream());
  });
  commit_f32(mean, m32);
  commit_f32(var, v32);
}

void bn_finalize(const Tensor& mean, const Tensor& var, Tensor& invstd, Tensor& running_mean, Tensor& running_var,
                 double momentum, double eps, double count) {
  const int C = as_int(mean.numel(), "channels");
  const Tensor m32 = f32_view(mean, true), v32 = f32_view(var, true);
  Tensor i32 = f32_view(invstd, false), rm32 = f32_view(running_mean, true), rv32 = f32_view(running_var, true);
  gpu::bn_finalize(ptr<float>(m32), ptr<float>(v32), ptr<float>(i32), ptr_or_null<float>(rm32),
                   ptr_or_null<float>(rv32), C, momentum, eps, count, CudaContext::get().stream());
  commit_f32(invstd, i32);
  commit_f32(running_mean, rm32);
  commit_f32(running_var, rv32);
}

void bn_pack_sums(const Tensor& mean, const Tensor& var, double M, void* sums) {
  const int C = as_int(mean.numel(), "channels");
  const Tensor m32 = f32_view(mean, true), v32 = f32_view(var, true);
  gpu::bn_pack_sums(ptr<float>(m32), ptr<float>(v32), M, C, static_cast<double*>(sums), CudaContext::get().stream());
}

void bn_unpack_sums(const void* sums, double count, Tensor& mean, Tensor& var) {
  const int C = as_int(mean.numel(), "channels");
  Tensor m32 = f32_view(mean, false), v32 = f32_view(var, false);
  gpu::bn_unpack_sums(static_cast<const double*>(sums), count, C, ptr<float>(m32), ptr<float>(v32),
                      CudaContext::get().stream());
  commit_f32(mean, m32);
  commit_f32(var, v32);
}

void bn_fwd_apply(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& gamma, const Tensor& beta,
                  Tensor& y, bool relu) {
  check_same_dtype(x, y, "bn_fwd_apply");
  int64_t M = 0;
  int C = 0;
  rows_cols(x, &M, &C);
  const Tensor m32 = f32_view(mean, true), i32 = f32_view(invstd, true), g32 = f32_view(gamma, true),
               b32 = f32_view(beta, true);
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "bn_fwd_apply", [&](auto tag) {
    using T = decltype(tag);
    gpu::bn_fwd_apply<T>(ptr<T>(x), ptr<float>(m32), ptr<float>(i32), ptr<float>(g32), ptr<float>(b32), ptr<T>(y), M,
                         C, stream, relu);
  });
}

void bn_bwd_reduce(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd, Tensor& sum_dy,
                   Tensor& sum_dy_xhat, const Tensor& relu_y) {
  check_same_dtype(dy, x, "bn_bwd_reduce");
  if (relu_y.defined()) check_same_dtype(dy, relu_y, "bn_bwd_reduce");
  int64_t M = 0;
  int C = 0;
  rows_cols(x, &M, &C);
  CudaContext& ctx = CudaContext::get();
  const Tensor m32 = f32_view(mean, true), i32 = f32_view(invstd, true);
  Tensor s32 = f32_view(sum_dy, false), sx32 = f32_view(sum_dy_xhat, false);
  void* ws = ctx.workspace(gpu::bn_workspace_bytes(M, C));
  dispatch_float(x.dtype(), "bn_bwd_reduce", [&](auto tag) {
    using T = decltype(tag);
    gpu::bn_bwd_reduce<T>(ptr<T>(dy), ptr<T>(x), ptr<float>(m32), ptr<float>(i32), M, C, ptr<float>(s32),
                          ptr<float>(sx32), ws, ctx.stream(), ptr_or_null<T>(relu_y));
  });
  commit_f32(sum_dy, s32);
  commit_f32(sum_dy_xhat, sx32);
}

void bn_bwd_apply(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& gamma,
                  const Tensor& sum_dy, const Tensor& sum_dy_xhat, double count, Tensor& dx, bool accumulate,
                  const Tensor& relu_y) {
  check_same_dtype(dy, x, "bn_bwd_apply");
  if (relu_y.defined()) check_same_dtype(dy, relu_y, "bn_bwd_apply");
  check_same_dtype(dy, dx, "bn_bwd_apply");
  int64_t M = 0;
  int C = 0;
  rows_cols(x, &M, &C);
  const Tensor m32 = f32_view(mean, true), i32 = f32_view(invstd, true), g32 = f32_view(gamma, true),
               s32 = f32_view(sum_dy, true), sx32 = f32_view(sum_dy_xhat, true);
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "bn_bwd_apply", [&](auto tag) {
    using T = decltype(tag);
    gpu::bn_bwd_apply<T>(ptr<T>(dy), ptr<T>(x), ptr<float>(m32), ptr<float>(i32), ptr<float>(g32),
                         ptr_or_null<float>(s32), ptr_or_null<float>(sx32), count, ptr<T>(dx), M, C, accumulate,
                         stream, ptr_or_null<T>(relu_y));
  });
}

// ---------------------------------------------------------------------------------------------
// elementwise

void relu_fwd(const Tensor& x, Tensor& y) {
  check_same_dtype(x, y, "relu_fwd");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "relu_fwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::relu_fwd<T>(ptr<T>(x), ptr<T>(y), x.numel(), stream);
  });
}

void relu_bwd(const Tensor& dy, const Tensor& y, Tensor& dx, bool accumulate) {
  check_same_dtype(dy, y, "relu_bwd");
  check_same_dtype(dy, dx, "relu_bwd");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(dy.dtype(), "relu_bwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::relu_bwd<T>(ptr<T>(dy), ptr<T>(y), ptr<T>(dx), dy.numel(), accumulate, stream);
  });
}

void add_fwd(const Tensor& a, const Tensor& b, Tensor& y) {
  check_same_dtype(a, b, "add_fwd");
  check_same_dtype(a, y, "add_fwd");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(a.dtype(), "add_fwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::add_fwd<T>(ptr<T>(a), ptr<T>(b), ptr<T>(y), a.numel(), stream);
  });
}

void add_relu_fwd(const Tensor& a, const Tensor& b, Tensor& y) {
  check_same_dtype(a, b, "add_relu_fwd");
  check_same_dtype(a, y, "add_relu_fwd");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(a.dtype(), "add_relu_fwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::add_relu_fwd<T>(ptr<T>(a), ptr<T>(b), ptr<T>(y), a.numel(), stream);
  });
}

void axpy(double alpha, const Tensor& dy, Tensor& dx, bool accumulate) {
  const Tensor g = in_dtype(dy, dx.dtype());
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(dx.dtype(), "axpy", [&](auto tag) {
    using T = decltype(tag);
    gpu::axpy<T>(static_cast<float>(alpha), ptr<T>(g), ptr<T>(dx), dx.numel(), accumulate, stream);
  });
}

void sum(const Tensor& x, double alpha, Tensor& y) {
  check_same_dtype(x, y, "sum");
  MIRA_CHECK(y.numel() == 1, "sum: output must have one element, got ", y.str());
  CudaContext& ctx = CudaContext::get();
  auto* partials = static_cast<double*>(ctx.workspace(sizeof(double) * gpu::sum_partials(x.numel())));
  dispatch_float(x.dtype(), "sum", [&](auto tag) {
    using T = decltype(tag);
    gpu::sum<T>(ptr<T>(x), x.numel(), alpha, ptr<T>(y), partials, ctx.stream());
  });
}

void broadcast_scalar_bwd(const Tensor& dy, double alpha, Tensor& dx, bool accumulate) {
  MIRA_CHECK(dy.numel() == 1, "broadcast_scalar_bwd: dy must have one element, got ", dy.str());
  const Tensor g = in_dtype(dy, dx.dtype());
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(dx.dtype(), "broadcast_scalar_bwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::broadcast_scalar_bwd<T>(ptr<T>(g), static_cast<float>(alpha), ptr<T>(dx), dx.numel(), accumulate, stream);
  });
}

// ---------------------------------------------------------------------------------------------
// pooling

void maxpool_fwd(const Tensor& x, Tensor& y, int k, int s, int p) {
  check_same_dtype(x, y, "maxpool_fwd");
  MIRA_CHECK(x.ndim() == 4 && y.ndim() == 4, "maxpool_fwd: NHWC tensors expected, got ", x.str(), ", ", y.str());
  const int N = as_int(x.dim(0), "N"), H = as_int(x.dim(1), "H"), W = as_int(x.dim(2), "W"), C = as_int(x.dim(3), "C");
  const int P = as_int(y.dim(1), "P"), Q = as_int(y.dim(2), "Q");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "maxpool_fwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::maxpool_fwd<T>(ptr<T>(x), ptr<T>(y), N, H, W, C, k, s, p, P, Q, stream);
  });
}

void maxpool_bwd(const Tensor& dy, const Tensor& x, Tensor& dx, int k, int s, int p, bool accumulate) {
  check_same_dtype(dy, x, "maxpool_bwd");
  check_same_dtype(dy, dx, "maxpool_bwd");
  MIRA_CHECK(x.ndim() == 4 && dy.ndim() == 4, "maxpool_bwd: NHWC tensors expected, got ", x.str(), ", ", dy.str());
  const int N = as_int(x.dim(0), "N"), H = as_int(x.dim(1), "H"), W = as_int(x.dim(2), "W"), C = as_int(x.dim(3), "C");
  const int P = as_int(dy.dim(1), "P"), Q = as_int(dy.dim(2), "Q");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "maxpool_bwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::maxpool_bwd<T>(ptr<T>(dy), ptr<T>(x), ptr<T>(dx), N, H, W, C, k, s, p, P, Q, accumulate, stream);
  });
}

void avgpool_fwd(const Tensor& x, Tensor& y) {
  check_same_dtype(x, y, "avgpool_fwd");
  MIRA_CHECK(x.ndim() == 4, "avgpool_fwd: NHWC input expected, got ", x.str());
  const int N = as_int(x.dim(0), "N"), HW = as_int(x.dim(1) * x.dim(2), "H*W"), C = as_int(x.dim(3), "C");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "avgpool_fwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::avgpool_fwd<T>(ptr<T>(x), ptr<T>(y), N, HW, C, stream);
  });
}

void avgpool_bwd(const Tensor& dy, Tensor& dx, bool accumulate) {
  check_same_dtype(dy, dx, "avgpool_bwd");
  MIRA_CHECK(dx.ndim() == 4, "avgpool_bwd: NHWC gradient expected, got ", dx.str());
  const int N = as_int(dx.dim(0), "N"), HW = as_int(dx.dim(1) * dx.dim(2), "H*W"), C = as_int(dx.dim(3), "C");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(dx.dtype(), "avgpool_bwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::avgpool_bwd<T>(ptr<T>(dy), ptr<T>(dx), N, HW, C, accumulate, stream);
  });
}

// ---------------------------------------------------------------------------------------------
// rows

void l2norm_fwd(const Tensor& x, Tensor& y, Tensor& norm, double eps) {
  check_same_dtype(x, y, "l2norm_fwd");
  const int N = as_int(x.dim(0), "rows"), D = as_int(x.numel() / std::max<int64_t>(x.dim(0), 1), "row length");
  Tensor n32 = f32_view(norm, false);
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "l2norm_fwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::l2norm_fwd<T>(ptr<T>(x), ptr<T>(y), ptr<float>(n32), N, D, eps, stream);
  });
  commit_f32(norm, n32);
}

void l2norm_bwd(const Tensor& dy, const Tensor& y, const Tensor& norm, Tensor& dx, double eps, bool accumulate) {
  check_same_dtype(dy, y, "l2norm_bwd");
  check_same_dtype(dy, dx, "l2norm_bwd");
  const int N = as_int(y.dim(0), "rows"), D = as_int(y.numel() / std::max<int64_t>(y.dim(0), 1), "row length");
  const Tensor n32 = f32_view(norm, true);
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(y.dtype(), "l2norm_bwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::l2norm_bwd<T>(ptr<T>(dy), ptr<T>(y), ptr<float>(n32), ptr<T>(dx), N, D, eps, accumulate, stream);
  });
}

void log_softmax_fwd(const Tensor& x, Tensor& y) {
  check_same_dtype(x, y, "log_softmax_fwd");
  const int N = as_int(x.dim(0), "rows"), K = as_int(x.numel() / std::max<int64_t>(x.dim(0), 1), "row length");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(x.dtype(), "log_softmax_fwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::log_softmax_fwd<T>(ptr<T>(x), ptr<T>(y), N, K, stream);
  });
}

void log_softmax_bwd(const Tensor& dy, const Tensor& y, Tensor& dx, bool accumulate) {
  check_same_dtype(dy, y, "log_softmax_bwd");
  check_same_dtype(dy, dx, "log_softmax_bwd");
  const int N = as_int(y.dim(0), "rows"), K = as_int(y.numel() / std::max<int64_t>(y.dim(0), 1), "row length");
  cudaStream_t stream = CudaContext::get().stream();
  dispatch_float(y.dtype(), "log_softmax_bwd", [&](auto tag) {
    using T = decltype(tag);
    gpu::log_softmax_bwd<T>(ptr<T>(dy), ptr<T>(y), ptr<T>(dx), N, K, accumulate, stream);
  });
}

void soft_ce_fwd(const Tensor& z, const Tensor& t, Tensor& loss_rows, Tensor& lse) {
  MIRA_CHECK(z.numel() == t.numel(), "soft_ce_fwd: logits ", z.str(), " and targets ", t.str(), " differ in size");
  const int N = as_int(z.dim(0), "rows"), K = as_int(z.numel() / std::max<int64_t>(z.dim(0), 1), "row length");
  Tensor l32 = f32_view(loss_rows, false), s32 = f32_view(lse, false);
  cudaStream_t stream = CudaContext::get().stream();
  if (z.dtype() == DType::BF16 && t.dtype() == DType::F32) {
    gpu::soft_ce_fwd<bf16, float>(ptr<bf16>(z), ptr<float>(t), ptr<float>(l32), ptr<float>(s32), N, K, stream);
  } else {
    const Tensor tz = in_dtype(t, z.dtype());
    dispatch_float(z.dtype(), "soft_ce_fwd", [&](auto tag) {
      using T = decltype(tag);
      gpu::soft_ce_fwd<T, T>(ptr<T>(z), ptr<T>(tz), ptr<float>(l32), ptr<float>(s32), N, K, stream);
    });
  }
  commit_f32(loss_rows, l32);
  commit_f32(lse, s32);
}

void soft_ce_bwd(const Tensor& z, const Tensor& t, const Tensor& lse, const Tensor& dloss, double alpha, Tensor& dz,
                 bool accumulate) {
  check_same_dtype(z, dz, "soft_ce_bwd");
  MIRA_CHECK(dloss.numel() == 1, "soft_ce_bwd: dloss must have one element, got ", dloss.str());
  const int N = as_int(z.dim(0), "rows"), K = as_int(z.numel() / std::max<int64_t>(z.dim(0), 1), "row length");
  const Tensor s32 = f32_view(lse, true), d32 = f32_view(dloss, true);
  const float a = static_cast<float>(alpha);
  cudaStream_t stream = CudaContext::get().stream();
  if (z.dtype() == DType::BF16 && t.dtype() == DType::F32) {
    gpu::soft_ce_bwd<bf16, float>(ptr<bf16>(z), ptr<float>(t), ptr<float>(s32), ptr<float>(d32), a, ptr<bf16>(dz), N,
                                  K, accumulate, stream);
  } else {
    const Tensor tz = in_dtype(t, z.dtype());
    dispatch_float(z.dtype(), "soft_ce_bwd", [&](auto tag) {
      using T = decltype(tag);
      gpu::soft_ce_bwd<T, T>(ptr<T>(z), ptr<T>(tz), ptr<float>(s32), ptr<float>(d32), a, ptr<T>(dz), N, K,
                             accumulate, stream);
    });
  }
}

}  // namespace mira::cuda
