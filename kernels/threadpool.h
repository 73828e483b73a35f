// A fixed pool of worker threads for data-parallel loops (the matmul and the model's per-layer
// work). Threads are created once; parallel_for allocates nothing and wakes the workers through
// an atomic generation counter (a short spin, then a futex wait), so a decode step's hundreds of
// small calls stay cheap.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace kiln {

class ThreadPool {
public:
    // n_threads <= 0: std::thread::hardware_concurrency() (at least 1). The calling thread counts
    // as one of them, so n_threads - 1 workers are started.
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(begin, end, thread_index) over [0, n) split into size() contiguous chunks, chunk i
    // = [n*i/size(), n*(i+1)/size()) run by thread i (the caller is thread 0). Empty chunks are
    // skipped, so with n < size() some threads do nothing; n == 1 runs inline as (0, 1, 0).
    // thread_index is in [0, size()) and never shared by two chunks running at the same time, so
    // it can pick per-thread scratch. Returns when every chunk is done; the first exception
    // thrown by fn is rethrown here after all chunks finish.
    // Calls from several threads at once are serialised. A call made from inside fn (nested)
    // runs the whole range inline as one chunk with the calling thread's index.
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
        run(n, &call_std_function, &fn);
    }
    // The same for any callable: it is called through a pointer, never copied, so a lambda
    // capturing any amount allocates nothing (building a std::function from a lambda bigger
    // than its small buffer would).
    template <class F>
    void parallel_for(int64_t n, F&& fn) {
        using Fn = std::remove_reference_t<F>;
        run(n, &call_callable<Fn>, static_cast<const void*>(std::addressof(fn)));
    }

private:
    using Trampoline = void (*)(const void* fn, int64_t begin, int64_t end, int thread);
    static void call_std_function(const void* fn, int64_t b, int64_t e, int t) {
        (*static_cast<const std::function<void(int64_t, int64_t, int)>*>(fn))(b, e, t);
    }
    template <class Fn>
    static void call_callable(const void* fn, int64_t b, int64_t e, int t) {
        (*static_cast<Fn*>(const_cast<void*>(fn)))(b, e, t);
    }

    void run(int64_t n, Trampoline call, const void* fn);
    void worker_main(int index);
    void run_chunk(int index);

    int n_threads_ = 1;
    std::vector<std::thread> workers_;
    std::mutex call_mutex_;

    // The job being run (valid while pending_ > 0).
    Trampoline call_ = nullptr;
    const void* fn_ = nullptr;
    int64_t n_ = 0;

    alignas(64) std::atomic<uint64_t> generation_{0};  // bumped once per job (and on shutdown)
    alignas(64) std::atomic<int> pending_{0};          // workers still running the current job
    alignas(64) std::atomic<bool> stop_{false};
    std::mutex error_mutex_;
    std::exception_ptr error_;
};

}  // namespace kiln
