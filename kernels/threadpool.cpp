#include "kernels/threadpool.h"

#include <chrono>

namespace kiln {
namespace {

// The pool whose job the current thread is running (workers: always their pool; the caller:
// during parallel_for). Lets a nested call run inline instead of deadlocking.
thread_local const ThreadPool* tls_running_pool = nullptr;
thread_local int tls_thread_index = 0;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    asm volatile("yield" ::: "memory");
#endif
}

// Spin for up to ~kSpin before blocking: consecutive parallel_for calls (a decode step makes
// hundreds) then find the workers awake, while an idle pool sleeps in the kernel.
constexpr auto kSpin = std::chrono::microseconds(100);

template <typename T, typename Pred>
void spin_then_wait(const std::atomic<T>& a, Pred done) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0;; ++i) {
        T v = a.load(std::memory_order_acquire);
        if (done(v)) return;
        // Pause-spin briefly, then yield so an oversubscribed machine (more runnable threads
        // than cores) still lets the thread we wait for run.
        if (i < 1024)
            cpu_relax();
        else
            std::this_thread::yield();
        if ((i & 63) == 63 && std::chrono::steady_clock::now() - start > kSpin) {
            for (;;) {
                v = a.load(std::memory_order_acquire);
                if (done(v)) return;
                a.wait(v, std::memory_order_acquire);
            }
        }
    }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
    if (n_threads <= 0) {
        const unsigned hc = std::thread::hardware_concurrency();
        n_threads = hc == 0 ? 1 : static_cast<int>(hc);
    }
    n_threads_ = n_threads;
    workers_.reserve(static_cast<size_t>(n_threads_ - 1));
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunk(int index) {
    const int64_t begin = n_ * index / n_threads_;
    const int64_t end = n_ * (index + 1) / n_threads_;
    if (begin >= end) return;
    try {
        call_(fn_, begin, end, index);
    } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
    }
}

void ThreadPool::worker_main(int index) {
    tls_running_pool = this;
    tls_thread_index = index;
    uint64_t seen = 0;
    for (;;) {
        spin_then_wait(generation_, [seen](uint64_t g) { return g != seen; });
        seen = generation_.load(std::memory_order_acquire);
        if (stop_.load(std::memory_order_acquire)) return;
        run_chunk(index);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
    }
}

void ThreadPool::run(int64_t n, Trampoline call, const void* fn) {
    if (n <= 0) return;
    if (tls_running_pool == this) {  // nested: run inline, keeping this thread's index
        call(fn, 0, n, tls_thread_index);
        return;
    }
    std::lock_guard<std::mutex> call_lock(call_mutex_);
    // While the caller runs chunk 0 it counts as thread 0 of this pool (restored afterwards: it
    // may be a worker of another pool).
    struct Mark {
        const ThreadPool* pool = tls_running_pool;
        int index = tls_thread_index;
        ~Mark() {
            tls_running_pool = pool;
            tls_thread_index = index;
        }
    } mark;
    tls_running_pool = this;
    tls_thread_index = 0;
    if (n_threads_ == 1 || n == 1) {
        call(fn, 0, n, 0);
        return;
    }

    call_ = call;
    fn_ = fn;
    n_ = n;
    error_ = nullptr;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();

    run_chunk(0);

    spin_then_wait(pending_, [](int p) { return p == 0; });
    call_ = nullptr;
    fn_ = nullptr;
    if (error_) {
        std::exception_ptr e = error_;
        error_ = nullptr;
        std::rethrow_exception(e);
    }
}

}  // namespace kiln
