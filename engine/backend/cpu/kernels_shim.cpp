// TEMPORARY: see kernels_shim.h.
#include "backend/cpu/kernels_shim.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/quant.h"

namespace kiln {

ThreadPool::ThreadPool(int n) : n_threads_(std::max(1, n)) {
    for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}
ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_work_.notify_all();
    for (auto& t : threads_) t.join();
}
static void run_slice(const std::function<void(int64_t, int64_t, int)>& fn, int64_t n, int nt, int id) {
    const int64_t per = (n + nt - 1) / nt;
    const int64_t b = std::min<int64_t>(n, per * id), e = std::min<int64_t>(n, b + per);
    if (b < e) fn(b, e, id);
}
void ThreadPool::worker(int id) {
    uint64_t seen = 0;
    for (;;) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_work_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        const auto* job = job_;
        const int64_t n = job_n_;
        lk.unlock();
        run_slice(*job, n, n_threads_, id);
        lk.lock();
        if (--pending_ == 0) cv_done_.notify_one();
    }
}
void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
    if (n <= 0) return;
    if (n_threads_ == 1 || n == 1) {
        fn(0, n, 0);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        job_ = &fn;
        job_n_ = n;
        pending_ = n_threads_ - 1;
        ++generation_;
    }
    cv_work_.notify_all();
    run_slice(fn, n, n_threads_, 0);
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [&] { return pending_ == 0; });
}

namespace kernels {

size_t matmul_scratch_bytes(TensorType, int64_t k, int64_t, int n_threads) {
    return static_cast<size_t>(k) * sizeof(float) * static_cast<size_t>(n_threads);
}


void matmul(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x, int64_t n_tokens,
            float* y, void* scratch, ThreadPool& pool) {
    const uint64_t rb = *row_bytes(wtype, static_cast<uint64_t>(k));
    pool.parallel_for(rows, [&](int64_t r0, int64_t r1, int th) {
        float* row = static_cast<float*>(scratch) + k * th;
        for (int64_t r = r0; r < r1; ++r) {
            dequantize_row(wtype, static_cast<const uint8_t*>(w) + rb * r, row, k);
            for (int64_t t = 0; t < n_tokens; ++t) {
                const float* xt = x + t * k;
                float s = 0;
                for (int64_t i = 0; i < k; ++i) s += row[i] * xt[i];
                y[t * rows + r] = s;
            }
        }
    });
}

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float s = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s * (w ? w[i] : 1.0f);
}
void softmax_inplace(float* x, int64_t n) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += (x[i] = std::exp(x[i] - m));
    const float inv = static_cast<float>(1.0 / s);
    for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}
float dot_f32_f16(const float* x, const uint16_t* y, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i] * fp16_to_fp32(y[i]);
    return s;
}
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * fp16_to_fp32(x[i]);
}

}  // namespace kernels
}  // namespace kiln
