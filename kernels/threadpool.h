// A fixed pool of worker threads for data-parallel loops (the matmul and the model's per-layer
// work). Threads are created once; parallel_for allocates nothing and wakes the workers through
// an atomic generation counter (a short spin, then a futex wait), so a decode step's hundreds of
// small calls stay cheap.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
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
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);
    // The same for any callable (a lambda capturing many references): it is passed on through a
    // closure of one pointer, which std::function holds without allocating, so a call allocates
    // nothing whatever fn captures.
    template <class F>
        requires(!std::is_same_v<std::remove_cvref_t<F>, std::function<void(int64_t, int64_t, int)>>)
    void parallel_for(int64_t n, F&& fn) {
        const std::function<void(int64_t, int64_t, int)> thunk = [&fn](int64_t b, int64_t e, int t) { fn(b, e, t); };
        parallel_for(n, thunk);
    }

private:
    void worker_main(int index);
    void run_chunk(int index);

    int n_threads_ = 1;
    std::vector<std::thread> workers_;
    std::mutex call_mutex_;

    // The job being run (valid while pending_ > 0).
    const std::function<void(int64_t, int64_t, int)>* fn_ = nullptr;
    int64_t n_ = 0;

    alignas(64) std::atomic<uint64_t> generation_{0};  // bumped once per job (and on shutdown)
    alignas(64) std::atomic<int> pending_{0};          // workers still running the current job
    alignas(64) std::atomic<bool> stop_{false};
    std::mutex error_mutex_;
    std::exception_ptr error_;
};

}  // namespace kiln
