// The CUDA emulator's runtime (cuda_emu.h): blocks as OS threads, threads as fibers.
#include "tests/cuda_emu/cuda_emu.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define MIRA_EMU_ASAN 1
#endif

#if !defined(__x86_64__)
#error "tests/cuda_emu switches fiber stacks with x86-64 code"
#endif

// Saves the callee-saved registers on the current stack, stores its pointer to *save, and
// resumes the stack at load (SysV x86-64).
extern "C" void mira_emu_switch(void** save, void* load);
asm(R"(
  .text
  .globl mira_emu_switch
  .type mira_emu_switch, @function
mira_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mira_emu_switch, .-mira_emu_switch
)");

namespace mira::emu {

namespace {
// The kernels' dynamic shared memory (MIRA_DYNAMIC_SMEM): one buffer per block (OS thread),
// as large as an H100's or H200's opt-in shared memory per block. Thread-local, as __shared__
// variables are here, so DSMEM maps it as it maps them (map_shared).
alignas(16) thread_local unsigned char smem[232448];
}  // namespace

unsigned char* dynamic_smem() {
  return smem;
}
size_t dynamic_smem_size() {
  return sizeof(smem);
}

namespace {

#ifdef MIRA_EMU_ASAN
constexpr size_t kStack = 512 * 1024;
#else
constexpr size_t kStack = 64 * 1024;
#endif
// Fiber stacks lie kStackStride apart: a power-of-two stride would put every fiber's canary
// and its top frames in the same few cache sets (a warp's 32 fibers run one after another),
// and the host would miss its caches at almost every switch; 37 lines more spread them.
constexpr size_t kStackStride = kStack + 37 * 64;
constexpr uint64_t kCanary = 0x6d6972615f656d75ull;
constexpr unsigned char kSmemGuard = 0xa5;
constexpr uintptr_t kTlsSpan = 4u << 20;  // static TLS below the thread pointer, searched for shared memory
constexpr auto kWaitLimit = std::chrono::seconds(120);

using Clock = std::chrono::steady_clock;

enum class Wait : uint8_t { Run, Warp, Block, Cluster, Grid, Done };

struct ClusterSync {
  std::mutex m;
  std::condition_variable cv;
  unsigned n = 0, count = 0;
  uint64_t gen = 0;
  std::vector<std::atomic<uintptr_t>> tp;  // each block's thread pointer (map_shared)
  explicit ClusterSync(unsigned size) : n(size), tp(size) {}
};

struct Launch {
  LaunchConfig cfg;
  const std::function<void()>* body = nullptr;
  std::vector<std::unique_ptr<ClusterSync>> clusters;
  std::unique_ptr<ClusterSync> grid;  // the grid's barrier (cooperative launches)
  std::atomic<bool> abort{false};
  std::mutex err_m;
  std::string error;

  void fail(const std::string& e) {
    {
      std::lock_guard<std::mutex> lk(err_m);
      if (error.empty()) error = e;
    }
    abort = true;
    for (auto& c : clusters) {
      std::lock_guard<std::mutex> lk(c->m);
      c->cv.notify_all();
    }
    if (grid) {
      std::lock_guard<std::mutex> lk(grid->m);
      grid->cv.notify_all();
    }
  }
};

// A thread's coordinates, copied into threadIdx and friends when its fiber resumes.
struct ThreadCtx {
  uint3 tid{};
  uint3 bid{};
  dim3 bdim, gdim;
};

// A cp.async in flight: the bytes it read, where they go, and the group it belongs to (the
// thread's count of commits when it was issued: committed once that count has moved on).
struct AsyncCopy {
  unsigned char* dst = nullptr;
  unsigned char data[16] = {};
  int bytes = 0;
  unsigned group = 0;
};

struct Fiber {
  void* sp = nullptr;
  Wait wait = Wait::Run;
  int site = 0;
  unsigned syncs = 0;  // warp exchanges passed (slot parity)
  ThreadCtx ctx;
  std::vector<AsyncCopy> copies;  // cp.async not yet complete
  unsigned commits = 0;           // cp.async.commit_group so far
  unsigned char* stack = nullptr;  // lowest address
#ifdef MIRA_EMU_ASAN
  void* fake = nullptr;
#endif
};

struct WarpState {
  int arrived = 0;
  int site = 0;
  uint64_t slot[2][32][kWarpShareWords] = {};  // by parity, lane, word
};

struct Block {
  Launch* L = nullptr;
  unsigned id = 0, rank = 0;
  ClusterSync* cl = nullptr;
  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
  int live = 0, at_block = 0, at_cluster = 0, at_grid = 0;
  unsigned cluster_barriers = 0;  // passed
  int spun = 0;                   // flag polls that came back empty in this sweep
#ifdef MIRA_EMU_ASAN
  void* sched_fake = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
#endif
};

thread_local Block* tblock = nullptr;
std::atomic<int> g_schedule{0};
thread_local Clock::time_point spin_start;

uintptr_t thread_pointer() {
  uintptr_t tp;
  asm("movq %%fs:0, %0" : "=r"(tp));
  return tp;
}

std::string where() {
  std::ostringstream o;
  if (tblock) o << "block " << tblock->id;
  if (tblock && tblock->cur) o << " thread " << (tblock->cur - tblock->fibers.data());
  return o.str();
}

// From a fiber: wait (or end), back to the block's scheduler.
void to_scheduler(Wait w, int site) {
  Block* b = tblock;
  Fiber* f = b->cur;
  f->wait = w;
  f->site = site;
#ifdef MIRA_EMU_ASAN
  __sanitizer_start_switch_fiber(w == Wait::Done ? nullptr : &f->fake, b->sched_bottom, b->sched_size);
#endif
  mira_emu_switch(&f->sp, b->sched_sp);
#ifdef MIRA_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake, nullptr, nullptr);
#endif
}

extern "C" void fiber_main() {
  Block* b = tblock;
#ifdef MIRA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_bottom, &b->sched_size);
#endif
  try {
    (*b->L->body)();
  } catch (const std::exception& e) {
    b->L->fail(where() + ": " + e.what());
  } catch (...) {
    b->L->fail(where() + ": unknown exception");
  }
  to_scheduler(Wait::Done, 0);
  std::abort();  // a finished fiber is never resumed
}

// The threads waiting on w, of the whole block or of one warp.
void release(Block& b, Wait w, int warp = -1) {
  const size_t lo = warp < 0 ? 0 : static_cast<size_t>(warp) * 32;
  const size_t hi = warp < 0 ? b.fibers.size() : std::min(b.fibers.size(), lo + 32);
  for (size_t i = lo; i < hi; ++i)
    if (b.fibers[i].wait == w) b.fibers[i].wait = Wait::Run;
}

// The OS-thread barrier of the block's cluster (or of the grid); false when the launch was
// aborted.
bool os_barrier(Block& b, ClusterSync& c) {
  std::unique_lock<std::mutex> lk(c.m);
  const uint64_t gen = c.gen;
  if (++c.count == c.n) {
    c.count = 0;
    ++c.gen;
    c.cv.notify_all();
    return true;
  }
  const auto t0 = Clock::now();
  while (c.gen == gen) {
    if (b.L->abort) return false;
    if (Clock::now() - t0 > kWaitLimit) {
      lk.unlock();
      b.L->fail("block " + std::to_string(b.id) + ": a cluster or grid barrier that other blocks never reach");
      return false;
    }
    c.cv.wait_for(lk, std::chrono::milliseconds(20));
  }
  return true;
}

// After fiber f has switched back: account for what it waits on, release complete barriers.
void arrived(Block& b, Fiber& f, size_t index) {
  switch (f.wait) {
    case Wait::Run:
      return;
    case Wait::Done:
      if (!f.copies.empty())
        throw Error("thread " + std::to_string(index) + " ended with " + std::to_string(f.copies.size()) +
                    " cp.async copies never waited for");
      --b.live;
      break;
    case Wait::Warp: {
      WarpState& ws = b.warps[index / 32];
      if (ws.arrived++ == 0) {
        ws.site = f.site;
      } else if (ws.site != f.site) {
        b.L->fail("block " + std::to_string(b.id) + " thread " + std::to_string(index) +
                  ": lanes of one warp at different shuffles (or a shuffle some lanes skip)");
        return;
      }
      if (ws.arrived == 32) {
        ws.arrived = 0;
        release(b, Wait::Warp, static_cast<int>(index / 32));
      }
      return;
    }
    case Wait::Block:
      ++b.at_block;
      break;
    case Wait::Cluster:
      ++b.at_cluster;
      break;
    case Wait::Grid:
      ++b.at_grid;
      break;
  }
  // Every thread of the block must reach a barrier (one that exited never will: an error).
  const int all = static_cast<int>(b.fibers.size());
  if (b.at_block == all) {
    b.at_block = 0;
    release(b, Wait::Block);
  }
  if (b.at_cluster == all) {
    b.at_cluster = 0;
    if (os_barrier(b, *b.cl)) {
      ++b.cluster_barriers;
      release(b, Wait::Cluster);
    }
  }
  if (b.at_grid == all) {
    b.at_grid = 0;
    if (os_barrier(b, *b.L->grid)) release(b, Wait::Grid);
  }
}

std::string stuck(const Block& b) {
  int warp = 0, blk = 0, cl = 0;
  for (const Fiber& f : b.fibers) {
    warp += f.wait == Wait::Warp;
    blk += f.wait == Wait::Block;
    cl += f.wait == Wait::Cluster || f.wait == Wait::Grid;
  }
  std::ostringstream o;
  o << "block " << b.id << ": threads wait forever (" << warp << " at shuffles, " << blk << " at __syncthreads, " << cl
    << " at cluster or grid barriers, " << b.live << " not finished): a barrier or shuffle that some threads skip";
  return o.str();
}

// The fiber stacks of the blocks an OS thread runs, mapped once and reused: a plain launch
// runs thousands of blocks on a few threads, and a fresh mapping per block would spend most of
// the time in page faults.
struct StackPool {
  unsigned char* base = nullptr;
  size_t bytes = 0;
  unsigned char* get(size_t need) {
    if (need <= bytes) return base;
    release();
    void* m = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw Error("cuda_emu: cannot map the fiber stacks");
    base = static_cast<unsigned char*>(m);
    bytes = need;
    return base;
  }
  void release() {
#ifdef MIRA_EMU_ASAN
    // Fibers that ended by switching away leave their frames' redzones poisoned; memory mapped
    // here later (another thread's stack and TLS) must not inherit them.
    if (base) ASAN_UNPOISON_MEMORY_REGION(base, bytes);
#endif
    if (base) munmap(base, bytes);
    base = nullptr;
    bytes = 0;
  }
  ~StackPool() { release(); }
};
thread_local StackPool t_stacks;

void run_block(Launch* L, unsigned id) {
  Block b;
  b.L = L;
  b.id = id;
  b.rank = id % L->cfg.cluster;
  b.cl = L->clusters[id / L->cfg.cluster].get();
  tblock = &b;
  const size_t n = L->cfg.block;
  try {
    unsigned char* stacks = t_stacks.get(n * kStackStride);
#ifdef MIRA_EMU_ASAN
    // Reused stacks: the frames of fibers that ended by switching away were never unwound, so
    // their redzones are still poisoned.
    ASAN_UNPOISON_MEMORY_REGION(stacks, n * kStackStride);
#endif
    b.fibers.resize(n);
    b.warps.resize((n + 31) / 32);
    for (size_t i = 0; i < n; ++i) {
      Fiber& f = b.fibers[i];
      f.stack = stacks + i * kStackStride;
      std::memcpy(f.stack, &kCanary, sizeof kCanary);  // a stack overflow shows (no guard pages: one
                                                       // mapping per block, not one per thread)
      void** sp = reinterpret_cast<void**>(f.stack + kStack);
      *--sp = nullptr;  // fiber_main's return address slot (never used)
      *--sp = reinterpret_cast<void*>(&fiber_main);
      for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp rbx r12-r15
      f.sp = sp;
      const dim3 bd = L->cfg.bdim.x > 0 ? L->cfg.bdim : dim3(L->cfg.block);
      const unsigned t = static_cast<unsigned>(i);
      f.ctx.tid = make_uint3(t % bd.x, t / bd.x % bd.y, t / (bd.x * bd.y));
      const dim3 g = L->cfg.gdim.x > 0 ? L->cfg.gdim : dim3(L->cfg.grid);
      f.ctx.bid = make_uint3(id % g.x, id / g.x % g.y, id / (g.x * g.y));
      f.ctx.bdim = bd;
      f.ctx.gdim = g;
    }
    b.live = static_cast<int>(n);
    std::memset(dynamic_smem(), 0xff, L->cfg.smem);  // NaN floats: what no thread wrote
    // Past what the launch asked for: a guard pattern, checked when the block ends (a GPU
    // faults on a shared-memory address beyond the block's allocation).
    std::memset(dynamic_smem() + L->cfg.smem, kSmemGuard, dynamic_smem_size() - L->cfg.smem);
    b.cl->tp[b.rank] = thread_pointer();
    // The order the threads run in (set_schedule): a kernel whose result depends on it reads
    // what another thread writes without a barrier between. A warp runs until none of its
    // threads can go on (each waits at a block, cluster or grid barrier, polls a flag, or has
    // ended), then the next warp: between two block barriers, each warp's stretch runs whole
    // before or after another's, in the warp order of the sweep, and its lanes in the lane
    // order of the round (both reversed with order 1, shuffled anew with order >= 2). Running a
    // warp's 32 fibers through its shuffles together keeps their stacks in the host's caches.
    const int order = g_schedule.load();
    const size_t nwarps = b.warps.size();
    std::vector<size_t> wperm(nwarps), lperm(32);
    for (size_t i = 0; i < nwarps; ++i) wperm[i] = order == 1 ? nwarps - 1 - i : i;
    for (size_t i = 0; i < 32; ++i) lperm[i] = order == 1 ? 31 - i : i;
    std::mt19937 rng(static_cast<uint32_t>(order) * 7919u + id);
    while (b.live > 0 && !L->abort) {
      int runs = 0, spins = 0;
      if (order >= 2) std::shuffle(wperm.begin(), wperm.end(), rng);
      for (size_t k = 0; k < nwarps && !L->abort; ++k) {
        const size_t base = wperm[k] * 32;
        for (;;) {
          int round = 0;
          b.spun = 0;
          if (order >= 2) std::shuffle(lperm.begin(), lperm.end(), rng);
          for (size_t l = 0; l < 32 && !L->abort; ++l) {
            const size_t i = base + lperm[l];
            Fiber& f = b.fibers[i];
            if (f.wait != Wait::Run) continue;
            b.cur = &f;
            threadIdx = f.ctx.tid;
            blockIdx = f.ctx.bid;
            blockDim = f.ctx.bdim;
            gridDim = f.ctx.gdim;
#ifdef MIRA_EMU_ASAN
            __sanitizer_start_switch_fiber(&b.sched_fake, f.stack, kStack);
#endif
            mira_emu_switch(&b.sched_sp, f.sp);
#ifdef MIRA_EMU_ASAN
            __sanitizer_finish_switch_fiber(b.sched_fake, nullptr, nullptr);
#endif
            ++round;
            if (std::memcmp(f.stack, &kCanary, sizeof kCanary) != 0)
              throw Error("thread " + std::to_string(i) + ": fiber stack overflow");
            arrived(b, f, i);
          }
          runs += round;
          spins += b.spun;
          // Nothing left to run, or every thread that ran only polled a flag (another warp
          // or block writes it): the next warp.
          if (round == 0 || b.spun == round || L->abort) break;
        }
      }
      if (runs == 0 && b.live > 0 && !L->abort) L->fail(stuck(b));
      // Every thread that ran only polled a flag: leave the cores to the blocks that write.
      if (runs > 0 && spins == runs) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (!L->abort)
      for (size_t k = L->cfg.smem; k < dynamic_smem_size(); ++k)
        if (dynamic_smem()[k] != kSmemGuard)
          throw Error("a write past the block's dynamic shared memory (byte " + std::to_string(k) + " of " +
                      std::to_string(L->cfg.smem) + " asked for)");
  } catch (const std::exception& e) {
    L->fail(std::string("block ") + std::to_string(id) + ": " + e.what());
  }
  tblock = nullptr;
}

}  // namespace

int lane_id() {  // by the thread's index in the block, x fastest (a 2-D block's warps span rows)
  return static_cast<int>((tblock->cur - tblock->fibers.data()) & 31);
}

void syncthreads() {
  to_scheduler(Wait::Block, 0);
}

namespace {

constexpr int kSiteLdmatrix = 3 << 16, kSiteMma = 4 << 16, kSiteMovmatrix = 5 << 16;

uint32_t half_bits(const void* p, int i) {
  uint16_t h;
  std::memcpy(&h, static_cast<const unsigned char*>(p) + 2 * i, 2);
  return h;
}
float half_of(unsigned reg, int k) {  // element k (0: low 16 bits) of a register of two halves
  return __half2float(__ushort_as_half(static_cast<unsigned short>(reg >> (16 * k))));
}

}  // namespace

void ldmatrix_x4(unsigned (&r)[4], const void* p, bool trans) {
  const int l = lane_id(), g = l / 4, t = l % 4;
  const uint64_t me = reinterpret_cast<uintptr_t>(p);
  // The PTX ISA: each row address 16-byte aligned (a GPU faults with a misaligned address).
  if (me % 16 != 0) trap("ldmatrix: a row address that is not 16-byte aligned");
  const WarpWords all = warp_share(0xffffffffu, &me, 1, kSiteLdmatrix | (trans ? 1 : 0));
  auto row = [&](int lane) { return reinterpret_cast<const void*>(all[lane][0]); };
  for (int i = 0; i < 4; ++i) {
    if (!trans) {
      const void* a = row(8 * i + g);
      r[i] = half_bits(a, 2 * t) | half_bits(a, 2 * t + 1) << 16;
    } else {
      r[i] = half_bits(row(8 * i + 2 * t), g) | half_bits(row(8 * i + 2 * t + 1), g) << 16;
    }
  }
}

unsigned movmatrix_trans(unsigned r) {
  const int l = lane_id(), g = l / 4, t = l % 4;
  // M(i, j) sits in lane 4i + j / 2, half j % 2.
  const uint64_t mine = r;
  const WarpWords all = warp_share(0xffffffffu, &mine, 1, kSiteMovmatrix);
  const auto x0 = static_cast<unsigned>(all[4 * (2 * t) + g / 2][0]);
  const auto x1 = static_cast<unsigned>(all[4 * (2 * t + 1) + g / 2][0]);
  const int sh = 16 * (g % 2);
  return ((x0 >> sh) & 0xffffu) | ((x1 >> sh) & 0xffffu) << 16;
}

void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  const int l = lane_id(), g = l / 4, t = l % 4;
  // Rows g and g + 8 of A from lanes 4g + s, columns 2t and 2t + 1 of B from lanes 4n + s.
  float A[2][16], B[16][2];
  const uint64_t mine[3] = {a[0] | static_cast<uint64_t>(a[1]) << 32, a[2] | static_cast<uint64_t>(a[3]) << 32,
                            b[0] | static_cast<uint64_t>(b[1]) << 32};
  const WarpWords all = warp_share(0xffffffffu, mine, 3, kSiteMma);
  for (int s = 0; s < 4; ++s) {
    const uint64_t x01 = all[4 * g + s][0], x23 = all[4 * g + s][1];
    for (int k = 0; k < 2; ++k) {
      A[0][2 * s + k] = half_of(static_cast<unsigned>(x01), k);
      A[1][2 * s + k] = half_of(static_cast<unsigned>(x01 >> 32), k);
      A[0][2 * s + 8 + k] = half_of(static_cast<unsigned>(x23), k);
      A[1][2 * s + 8 + k] = half_of(static_cast<unsigned>(x23 >> 32), k);
    }
    for (int n = 0; n < 2; ++n) {
      const uint64_t y = all[4 * (2 * t + n) + s][2];
      for (int k = 0; k < 2; ++k) {
        B[2 * s + k][n] = half_of(static_cast<unsigned>(y), k);
        B[2 * s + 8 + k][n] = half_of(static_cast<unsigned>(y >> 32), k);
      }
    }
  }
  for (int m = 0; m < 2; ++m)
    for (int n = 0; n < 2; ++n) {
#ifdef MIRA_EMU_GPU_MATH
      // The tensor cores' sum, modelled: the products exact, one sum with c, truncated toward
      // zero once (published measurements of their f32 accumulation: no rounding to nearest,
      // alignment to the largest term).
      double x = d[2 * m + n];
      for (int k = 0; k < 16; ++k) x += static_cast<double>(A[m][k]) * B[k][n];
      float f = static_cast<float>(x);
      if (std::fabs(static_cast<double>(f)) > std::fabs(x)) f = std::nextafter(f, 0.f);
      d[2 * m + n] = f;
#else
      float acc = d[2 * m + n];
      for (int k = 0; k < 16; ++k) acc = std::fma(A[m][k], B[k][n], acc);
      d[2 * m + n] = acc;
#endif
    }
}

WarpWords warp_share(unsigned mask, const uint64_t* words, int n, int site) {
  if (mask != 0xffffffffu) trap("a shuffle with a partial mask (not emulated)");
  Block* b = tblock;
  Fiber* f = b->cur;
  const size_t index = static_cast<size_t>(f - b->fibers.data());
  WarpState& ws = b->warps[index / 32];
  // Slots alternate by parity: a lane writes the next exchange's slot only after its warp
  // passed this one, and the one after only once every lane has read this one.
  const unsigned par = f->syncs & 1u;
  std::memcpy(ws.slot[par][index % 32], words, sizeof(uint64_t) * static_cast<size_t>(n));
  to_scheduler(Wait::Warp, site);
  ++f->syncs;
  return ws.slot[par];
}

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src_lane, int site) {
  return warp_share(mask, &bits, 1, site)[src_lane][0];
}

void cluster_sync() {
  to_scheduler(Wait::Cluster, 0);
}

void grid_sync() {
  to_scheduler(Wait::Grid, 0);
}

void cp_async(void* dst, const void* src, int bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) trap("cp.async of other than 4, 8 or 16 bytes");
  if (reinterpret_cast<uintptr_t>(dst) % static_cast<uintptr_t>(bytes) != 0 ||
      reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(bytes) != 0)
    trap("a misaligned cp.async");
  const unsigned char* d = static_cast<const unsigned char*>(dst);
  if (d < dynamic_smem() || d + bytes > dynamic_smem() + tblock->L->cfg.smem)
    trap("a cp.async outside the block's dynamic shared memory");
  Fiber& f = *tblock->cur;
  AsyncCopy c;
  c.dst = static_cast<unsigned char*>(dst);
  std::memcpy(c.data, src, static_cast<size_t>(bytes));
  c.bytes = bytes;
  c.group = f.commits;
  f.copies.push_back(c);
}
void cp_async_commit() {
  ++tblock->cur->commits;
}
void cp_async_wait(int pending) {
  Fiber& f = *tblock->cur;
  const unsigned done = f.commits > static_cast<unsigned>(pending) ? f.commits - static_cast<unsigned>(pending) : 0u;
  auto keep = f.copies.begin();
  for (auto it = f.copies.begin(); it != f.copies.end(); ++it) {
    if (it->group < done)
      std::memcpy(it->dst, it->data, static_cast<size_t>(it->bytes));
    else
      *keep++ = *it;
  }
  f.copies.erase(keep, f.copies.end());
}

unsigned cluster_rank() {
  return tblock->rank;
}

unsigned cluster_size() {
  return tblock->L->cfg.cluster;
}

void* map_shared(const void* p, unsigned rank) {
  Block* b = tblock;
  if (rank >= b->L->cfg.cluster) trap("map_shared_rank: rank beyond the cluster");
  const uintptr_t me = thread_pointer(), q = reinterpret_cast<uintptr_t>(p);
  if (q >= me || me - q > kTlsSpan) trap("map_shared_rank of an address outside shared memory");
  // A GPU only guarantees that the cluster's other blocks have started (their shared memory
  // exists) after a cluster barrier.
  if (b->cluster_barriers == 0) trap("map_shared_rank before the block's first cluster barrier");
  const uintptr_t other = b->cl->tp[rank];
  return reinterpret_cast<void*>(other - (me - q));
}

void trap(const char* what) {
  throw Error(what);
}

void spin_wait(int& n) {
  Block* b = tblock;
  if (n++ == 0) spin_start = Clock::now();
  if (b->L->abort) throw Error("launch aborted while waiting on a flag");
  // The word may come from another thread of this block (the GPU runs its warps meanwhile),
  // or from another block (another OS thread).
  ++b->spun;
  to_scheduler(Wait::Run, 0);
  if ((n & 1023) == 0 && Clock::now() - spin_start > kWaitLimit) trap("a flag-tagged word that no block writes");
}

long long clock() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

namespace {
DeviceProps g_device;
}  // namespace

void set_schedule(int order) {
  g_schedule = order;
}

void set_device(const DeviceProps& d) {
  if (static_cast<size_t>(d.smem_optin) > dynamic_smem_size())
    throw Error("cuda_emu: more shared memory than emulated");
  g_device = d;
}

namespace rt {

cudaError_t GetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
cudaError_t DeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  const DeviceProps& d = g_device;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *v = d.sms;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = d.smem_optin;
      break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *v = d.smem_sm;
      break;
    case cudaDevAttrL2CacheSize:
      *v = d.l2;
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *v = d.major;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *v = d.minor;
      break;
    case cudaDevAttrMaxThreadsPerMultiProcessor:
      *v = d.threads_sm;
      break;
    case cudaDevAttrCooperativeLaunch:
      *v = 1;
      break;
    default:
      throw Error("cuda_emu: device attribute " + std::to_string(static_cast<int>(attr)) + " not emulated");
  }
  return cudaSuccess;
}
cudaError_t FuncGetAttributes(cudaFuncAttributes* fa, const void*) {
  *fa = cudaFuncAttributes{};
  fa->sharedSizeBytes = kStaticSmem;
  fa->maxThreadsPerBlock = 1024;
  fa->numRegs = 32;
  fa->binaryVersion = fa->ptxVersion = 10 * g_device.major + g_device.minor;
  return cudaSuccess;
}
cudaError_t FuncSetAttribute(const void*, cudaFuncAttribute, int) {
  return cudaSuccess;
}
cudaError_t occupancy(int* n, int block, size_t dyn) {
  const long long per_block = static_cast<long long>(dyn) + kStaticSmem + 1024;  // + the 1 KB CUDA reserves
  *n = per_block > g_device.smem_optin + 1024
           ? 0
           : static_cast<int>(std::min<long long>(g_device.threads_sm / block, g_device.smem_sm / per_block));
  return cudaSuccess;
}
cudaError_t OccupancyMaxActiveClusters(int* n, const void*, const cudaLaunchConfig_t* cfg) {
  unsigned size = 1;
  for (unsigned i = 0; i < cfg->numAttrs; ++i)
    if (cfg->attrs[i].id == cudaLaunchAttributeClusterDimension) size = cfg->attrs[i].val.clusterDim.x;
  const DeviceProps& d = g_device;
  if (cfg->dynamicSmemBytes + kStaticSmem > static_cast<size_t>(d.smem_optin) || d.major < 9 || size > 16) {
    *n = 0;
  } else {
    // Blocks per SM as the occupancy allows (one for the cluster plan's ~200 KB blocks); an
    // H100's GPCs hold fewer clusters of 8 or 16 than its SM count alone would.
    int per_sm = 0;
    occupancy(&per_sm, static_cast<int>(cfg->blockDim.x * cfg->blockDim.y * cfg->blockDim.z), cfg->dynamicSmemBytes);
    const int by_sms = d.sms * per_sm / static_cast<int>(size);
    *n = size == 16  ? std::min(by_sms, d.clusters16 * per_sm)
         : size == 8 ? std::min(by_sms, 2 * d.clusters16 * per_sm)
                     : by_sms;
  }
  return cudaSuccess;
}
cudaError_t MemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t Memset(void* p, int v, size_t n) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t GetLastError() {
  return cudaSuccess;
}
cudaError_t StreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* st) {
  *st = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t StreamSynchronize(cudaStream_t) {
  return cudaSuccess;
}
cudaError_t DeviceSynchronize() {
  return cudaSuccess;
}

}  // namespace rt

void launch(const LaunchConfig& cfg, const std::function<void()>& body) {
  if (cfg.block < 32 || cfg.block > 1024 || cfg.block % 32 != 0)
    throw Error("cuda_emu: blocks of 32..1024 threads, whole warps");
  if (cfg.gdim.x > 0 && cfg.grid != cfg.gdim.x * cfg.gdim.y * cfg.gdim.z) throw Error("cuda_emu: grid != gdim");
  if (cfg.bdim.x > 0 && cfg.block != cfg.bdim.x * cfg.bdim.y * cfg.bdim.z) throw Error("cuda_emu: block != bdim");
  // Resident blocks are OS threads: at most 4096 of them. A plain launch runs a few at a time.
  if (cfg.cluster < 1 || cfg.grid < 1 || cfg.grid % cfg.cluster != 0 ||
      cfg.grid > (cfg.all_resident ? 4096u : 1u << 20))
    throw Error("cuda_emu: a grid of 1..4096 resident blocks (2^20 in a plain launch), a whole number of clusters");
  if (cfg.smem > dynamic_smem_size()) throw Error("cuda_emu: more dynamic shared memory than the emulated block has");
  Launch L;
  L.cfg = cfg;
  L.body = &body;
  for (unsigned c = 0; c < cfg.grid / cfg.cluster; ++c)
    L.clusters.push_back(std::make_unique<ClusterSync>(cfg.cluster));
  L.grid = std::make_unique<ClusterSync>(cfg.grid);
  std::vector<std::thread> threads;
  std::atomic<unsigned> next{0};  // a plain launch's next block (outlives the threads that take it)
  if (cfg.all_resident) {
    threads.reserve(cfg.grid);
    for (unsigned id = 0; id < cfg.grid; ++id) threads.emplace_back(run_block, &L, id);
  } else {
    for (unsigned w = 0; w < std::min(cfg.grid, 4u); ++w)
      threads.emplace_back([&] {
        for (unsigned id = next++; id < cfg.grid && !L.abort; id = next++) run_block(&L, id);
      });
  }
  for (auto& t : threads) t.join();
  if (!L.error.empty()) throw Error(L.error);
}

}  // namespace mira::emu
