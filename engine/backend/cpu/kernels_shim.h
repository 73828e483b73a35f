// TEMPORARY stand-in for the kern and quant branches (kernels/threadpool.h, kernels/matmul.h,
// kernels/ops.h, quant fp16 conversions), written against their announced signatures so the CPU
// backend can run before they land. Deleted when they merge: the backend then includes theirs.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "quant/types.h"

namespace kiln {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    int size() const { return n_threads_; }
    // Splits [0, n) into one contiguous range per thread and runs fn(begin, end, thread) on each;
    // returns when all are done.
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

private:
    void worker(int id);
    int n_threads_;
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable cv_work_, cv_done_;
    const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
    int64_t job_n_ = 0;
    uint64_t generation_ = 0;
    int pending_ = 0;
    bool stop_ = false;
};

namespace kernels {
size_t matmul_scratch_bytes(TensorType wtype, int64_t k, int64_t n_tokens, int n_threads);
void matmul(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x, int64_t n_tokens,
            float* y, void* scratch, ThreadPool& pool);

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);
void softmax_inplace(float* x, int64_t n);
float dot_f32_f16(const float* x, const uint16_t* y, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);  // y += a * x
}  // namespace kernels
}  // namespace kiln
