#include "kernels/threadpool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace {

TEST(ThreadPool, SizeDefaultsToHardware) {
    kiln::ThreadPool p0(0);
    EXPECT_GE(p0.size(), 1);
    kiln::ThreadPool p3(3);
    EXPECT_EQ(p3.size(), 3);
}

TEST(ThreadPool, ChunksCoverRangeExactlyOnce) {
    for (int threads : {1, 2, 3, 4, 7}) {
        kiln::ThreadPool pool(threads);
        for (int64_t n : {0, 1, 2, 3, 5, 6, 7, 8, 100, 1001}) {
            std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
            std::vector<std::atomic<int>> per_thread(static_cast<size_t>(threads));
            pool.parallel_for(n, [&](int64_t b, int64_t e, int t) {
                ASSERT_LT(b, e);
                ASSERT_GE(b, 0);
                ASSERT_LE(e, n);
                ASSERT_GE(t, 0);
                ASSERT_LT(t, threads);
                per_thread[static_cast<size_t>(t)]++;
                for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
            });
            for (int64_t i = 0; i < n; ++i)
                ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1)
                    << "threads=" << threads << " n=" << n << " i=" << i;
            for (int t = 0; t < threads; ++t)  // each thread index runs at most one chunk
                ASSERT_LE(per_thread[static_cast<size_t>(t)].load(), 1);
        }
    }
}

TEST(ThreadPool, SmallerRangeThanThreads) {
    kiln::ThreadPool pool(8);
    std::atomic<int> calls{0};
    std::atomic<int64_t> covered{0};
    pool.parallel_for(3, [&](int64_t b, int64_t e, int) {
        calls++;
        covered += e - b;
    });
    EXPECT_EQ(covered.load(), 3);
    EXPECT_LE(calls.load(), 3);
}

TEST(ThreadPool, ManyCallsSumEqualsSerial) {
    kiln::ThreadPool pool(4);
    const int64_t n = 10007;
    std::vector<int64_t> data(static_cast<size_t>(n));
    std::iota(data.begin(), data.end(), 1);
    int64_t serial = 0;
    for (int64_t v : data) serial += v;
    std::vector<int64_t> partial(static_cast<size_t>(pool.size()));
    for (int iter = 0; iter < 2000; ++iter) {
        std::fill(partial.begin(), partial.end(), 0);
        pool.parallel_for(n, [&](int64_t b, int64_t e, int t) {
            int64_t s = 0;
            for (int64_t i = b; i < e; ++i) s += data[static_cast<size_t>(i)] * (iter % 3 + 1);
            partial[static_cast<size_t>(t)] += s;
        });
        int64_t total = 0;
        for (int64_t v : partial) total += v;
        ASSERT_EQ(total, serial * (iter % 3 + 1)) << "iteration " << iter;
    }
}

TEST(ThreadPool, ExceptionPropagatesAndPoolStaysUsable) {
    kiln::ThreadPool pool(3);
    EXPECT_THROW(pool.parallel_for(30,
                                   [&](int64_t b, int64_t, int) {
                                       if (b >= 10) throw std::runtime_error("boom");
                                   }),
                 std::runtime_error);
    std::atomic<int64_t> covered{0};
    pool.parallel_for(30, [&](int64_t b, int64_t e, int) { covered += e - b; });
    EXPECT_EQ(covered.load(), 30);
}

TEST(ThreadPool, NestedCallRunsInline) {
    kiln::ThreadPool pool(3);
    std::atomic<int64_t> covered{0};
    pool.parallel_for(6, [&](int64_t b, int64_t e, int t) {
        pool.parallel_for(e - b, [&](int64_t b2, int64_t e2, int t2) {
            EXPECT_EQ(t2, t);
            covered += e2 - b2;
        });
    });
    EXPECT_EQ(covered.load(), 6);
}

TEST(ThreadPool, NestedSingleElementAndOtherPool) {
    kiln::ThreadPool outer(2), inner(2);
    std::atomic<int64_t> covered{0};
    outer.parallel_for(1, [&](int64_t, int64_t, int) {
        outer.parallel_for(5, [&](int64_t b, int64_t e, int) { covered += e - b; });  // nested, inline
    });
    EXPECT_EQ(covered.load(), 5);
    covered = 0;
    outer.parallel_for(4, [&](int64_t, int64_t, int t) {
        inner.parallel_for(10, [&](int64_t b, int64_t e, int) { covered += e - b; });  // other pool
        outer.parallel_for(3, [&](int64_t b, int64_t e, int t2) {                    // still nested
            EXPECT_EQ(t2, t);
            covered += e - b;
        });
    });
    EXPECT_EQ(covered.load(), 2 * 10 + 2 * 3);  // fn ran once per chunk: two chunks
}

TEST(ThreadPool, ConcurrentCallersAreSerialised) {
    kiln::ThreadPool pool(2);
    std::vector<std::atomic<int>> busy(2);
    std::atomic<bool> overlap{false};
    auto body = [&](int64_t, int64_t, int t) {
        if (busy[static_cast<size_t>(t)]++ != 0) overlap = true;
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        busy[static_cast<size_t>(t)]--;
    };
    std::thread a([&] { for (int i = 0; i < 200; ++i) pool.parallel_for(i % 3 + 1, body); });
    std::thread b([&] { for (int i = 0; i < 200; ++i) pool.parallel_for(i % 3 + 1, body); });
    a.join();
    b.join();
    EXPECT_FALSE(overlap.load()) << "two chunks ran with the same thread index at once";
}

// A move-only lambda cannot become a std::function: this compiles only because parallel_for takes
// any callable by reference, which is also why big captures never allocate.
TEST(ThreadPool, TakesCallablesWithoutStdFunction) {
    kiln::ThreadPool pool(2);
    auto owned = std::make_unique<std::atomic<int64_t>>(0);
    char big[512] = {};
    auto body = [p = std::move(owned), big](int64_t b, int64_t e, int) { *p += (e - b) + big[0]; };
    pool.parallel_for(100, body);
    std::atomic<int64_t> covered{0};
    const std::function<void(int64_t, int64_t, int)> f = [&](int64_t b, int64_t e, int) { covered += e - b; };
    pool.parallel_for(50, f);  // the std::function overload still works
    EXPECT_EQ(covered.load(), 50);
}

TEST(ThreadPool, IdleThenReuse) {
    kiln::ThreadPool pool(2);
    for (int round = 0; round < 3; ++round) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // workers go to sleep
        std::atomic<int64_t> covered{0};
        pool.parallel_for(100, [&](int64_t b, int64_t e, int) { covered += e - b; });
        EXPECT_EQ(covered.load(), 100);
    }
}

}  // namespace
