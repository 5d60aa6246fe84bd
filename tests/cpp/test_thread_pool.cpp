// ThreadPool: every task runs exactly once on some thread of the pool, exceptions reach the
// caller, the sleeping and spinning hand-offs both deliver jobs, and misuse is rejected.
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "core/thread_pool.h"

using flashmtp::ThreadPool;

namespace {

// Each task of every job runs once, on a thread of the pool (jobs of one task run inline on the caller).
void test_partition() {
    for (int n_threads : {1, 2, 3, 4}) {
        ThreadPool pool(n_threads);
        CHECK(pool.n_threads() == n_threads);
        for (int64_t n_tasks : {0, 1, 2, 3, 7, 100, 1001}) {
            std::vector<std::atomic<int>> runs(static_cast<size_t>(n_tasks));
            std::vector<int> thread_of(size_t(n_tasks), -1);
            pool.parallel_for(n_tasks, [&](int64_t task, int thread) {
                runs[size_t(task)].fetch_add(1);
                thread_of[size_t(task)] = thread;
            });
            for (int64_t i = 0; i < n_tasks; ++i) {
                CHECK_MSG(runs[size_t(i)].load() == 1, "threads %d tasks %lld: task %lld ran %d times", n_threads,
                          (long long)n_tasks, (long long)i, runs[size_t(i)].load());
                const int thread = thread_of[size_t(i)];
                CHECK_MSG(thread >= 0 && thread < (n_tasks > 1 ? n_threads : 1),
                          "threads %d tasks %lld: task %lld on thread %d", n_threads, (long long)n_tasks,
                          (long long)i, thread);
            }
        }
    }
}

// The threads really run at once: every task waits until all have started (serial execution would stall).
void test_tasks_run_concurrently() {
    ThreadPool pool(3);
    std::atomic<int> arrived{0};
    std::atomic<bool> all_met{true};
    pool.parallel_for(3, [&](int64_t, int) {
        arrived.fetch_add(1);
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (arrived.load() < 3) {
            if (std::chrono::steady_clock::now() > give_up) {
                all_met.store(false);
                return;
            }
            std::this_thread::yield();
        }
    });
    CHECK(all_met.load());
}

// A long series of tiny jobs: the per-layer pattern of decoding. Also reports the hand-off cost.
void test_many_small_jobs() {
    ThreadPool pool(2);
    constexpr int kJobs = 20000;
    std::atomic<int64_t> sum{0};
    const auto start = std::chrono::steady_clock::now();
    for (int j = 0; j < kJobs; ++j) {
        pool.parallel_for(4, [&](int64_t task, int) { sum.fetch_add(task + 1); });
    }
    const std::chrono::duration<double, std::micro> elapsed = std::chrono::steady_clock::now() - start;
    CHECK(sum.load() == int64_t(kJobs) * 10);
    std::printf("thread pool: %.2f us per 2-thread job of 4 empty tasks\n", elapsed.count() / kJobs);
}

// Workers that slept (idle pool) and a caller that slept (slow worker) are both woken.
void test_sleeping_handoffs() {
    ThreadPool pool(3);
    for (int round = 0; round < 3; ++round) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // well past the spin time: workers block
        std::atomic<int> ran{0};
        pool.parallel_for(3, [&](int64_t, int thread) {
            if (thread == 2) std::this_thread::sleep_for(std::chrono::milliseconds(3));  // the caller blocks
            ran.fetch_add(1);
        });
        CHECK(ran.load() == 3);
    }
}

void test_exceptions() {
    ThreadPool pool(2);
    // Whichever thread runs it, a task's exception reaches the caller.
    CHECK_THROWS(std::runtime_error,
                 pool.parallel_for(4, [](int64_t task, int) {
                     if (task == 3) throw std::runtime_error("task 3 failed");
                 }),
                 "task 3 failed");
    // Two tasks throw: the exception of the lower task index wins, whichever threads ran them.
    for (int round = 0; round < 100; ++round) {
        CHECK_THROWS(std::runtime_error,
                     pool.parallel_for(6, [&](int64_t task, int) {
                         if (task == 1) throw std::runtime_error("task 1");
                         if (task == 4) throw std::runtime_error("task 4");
                     }),
                     "task 1");
    }
    // The pool is still usable afterwards.
    std::atomic<int> ran{0};
    pool.parallel_for(10, [&](int64_t, int) { ran.fetch_add(1); });
    CHECK(ran.load() == 10);
    // One thread: the exception propagates directly.
    ThreadPool single(1);
    CHECK_THROWS(std::logic_error, single.parallel_for(3, [](int64_t, int) { throw std::logic_error("inline"); }),
                 "inline");
}

// A one-thread pool, or a job its caller says is not worth sharing, runs every task inline, in order.
void test_single_thread_runs_inline() {
    for (const bool share : {true, false}) {
        ThreadPool pool(share ? 1 : 3);
        const std::thread::id caller = std::this_thread::get_id();
        bool all_inline = true;
        int64_t next = 0;
        bool in_order = true;
        pool.parallel_for(50, share, [&](int64_t task, int thread) {
            all_inline = all_inline && thread == 0 && std::this_thread::get_id() == caller;
            in_order = in_order && task == next++;
        });
        CHECK(all_inline);
        CHECK(in_order);
        CHECK_THROWS(std::logic_error,
                     pool.parallel_for(2, share, [&](int64_t, int) { pool.parallel_for(2, [](int64_t, int) {}); }),
                     "inside a task of the same pool");
    }
}

void test_misuse() {
    CHECK_THROWS(std::invalid_argument, ThreadPool(0), "n_threads must be >= 1");
    for (int n_threads : {1, 2}) {
        ThreadPool pool(n_threads);
        CHECK_THROWS(std::logic_error,
                     pool.parallel_for(4, [&](int64_t, int) { pool.parallel_for(2, [](int64_t, int) {}); }),
                     "inside a task of the same pool");
        // A task may use a different pool, and is still inside its own pool afterwards.
        ThreadPool inner(2);
        std::atomic<int> ran{0};
        bool nested_rejected = false;
        pool.parallel_for(2, [&](int64_t task, int) {
            if (task != 0) return;
            inner.parallel_for(3, [&](int64_t, int) { ran.fetch_add(1); });
            try {
                pool.parallel_for(2, [](int64_t, int) {});
            } catch (const std::logic_error &) {
                nested_rejected = true;
            }
        });
        CHECK(ran.load() == 3);
        CHECK(nested_rejected);
    }
}

// Two threads submitting to one pool: calls are serialised, none is lost.
void test_concurrent_callers() {
    ThreadPool pool(2);
    std::atomic<int64_t> sum{0};
    auto submit = [&] {
        for (int j = 0; j < 2000; ++j) pool.parallel_for(5, [&](int64_t task, int) { sum.fetch_add(task); });
    };
    std::thread a(submit), b(submit);
    a.join();
    b.join();
    CHECK(sum.load() == 2 * 2000 * 10);
}

}  // namespace

int main() {
    test_partition();
    test_tasks_run_concurrently();
    test_many_small_jobs();
    test_sleeping_handoffs();
    test_exceptions();
    test_single_thread_runs_inline();
    test_misuse();
    test_concurrent_callers();
    return test::exit_code("test_thread_pool");
}
