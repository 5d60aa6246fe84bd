// Worker hand-off: a generation counter announces each job; tasks are then claimed from next_task_. The job
// is closed (job_open_ false) once the caller finds no task left, and the caller returns when no worker is
// still counted in n_active_: a worker counts itself before checking job_open_, so with sequentially
// consistent atomics either the caller sees the count and waits, or the worker sees the job closed and never
// touches it (the caller's job context lives on the caller's stack). A worker slow to wake thus costs nothing.
// Threads spin on it for a short while, so the
// back-to-back jobs of a decode step (one per layer operation, microseconds apart) start without a system
// call, then block on a condition variable so an idle pool costs no CPU. The wait for completion works the
// same way in reverse. Every blocking side publishes "I am about to sleep" (n_sleeping_, caller_sleeping_)
// before re-checking its condition under mutex_, and every waking side checks that flag after publishing its
// change: with sequentially consistent atomics one of the two always sees the other, so no wake-up is lost
// and the common, non-sleeping path takes no lock.
#include "core/thread_pool.h"

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

namespace flashmtp {

namespace {

// Long enough to bridge the gaps between the operations of one decode step, short enough that a pool left
// idle (between requests, or while Python runs) stops competing for the cores almost at once.
constexpr auto kSpinTime = std::chrono::microseconds(200);
// After this, spinning yields the core between polls: when other processes share the cores, the thread being
// waited for may be the one that needs it.
constexpr auto kPauseOnlyTime = std::chrono::microseconds(20);

// The pool whose task this thread is running, to reject nested parallel_for calls (they would deadlock).
thread_local const ThreadPool *tls_running_pool = nullptr;

struct RunningPoolScope {  // restores the outer value: a task of one pool may run jobs on another
    explicit RunningPoolScope(const ThreadPool *pool) : outer(tls_running_pool) { tls_running_pool = pool; }
    ~RunningPoolScope() { tls_running_pool = outer; }
    const ThreadPool *outer;
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();  // SSE2, part of the x86-64 baseline: lets the sibling hyper-thread run
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Polls done() for up to kSpinTime; true as soon as it holds.
template <typename Pred>
bool spin_until(Pred done) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
        for (int i = 0; i < 64; ++i) {
            if (done()) return true;
            cpu_relax();
        }
        const auto spun = std::chrono::steady_clock::now() - start;
        if (spun >= kSpinTime) return false;
        if (spun >= kPauseOnlyTime) std::this_thread::yield();
    }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
    if (n_threads < 1) {
        throw std::invalid_argument("ThreadPool: n_threads must be >= 1, got " + std::to_string(n_threads));
    }
    job_errors_.resize(size_t(n_threads));
    workers_.reserve(size_t(n_threads - 1));
    try {
        for (int t = 1; t < n_threads; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
    } catch (...) {  // the system refused a thread: join those started, or their destructors terminate
        stop_workers();
        throw;
    }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_.store(true);
        generation_.fetch_add(1);
    }
    wake_cv_.notify_all();
    for (std::thread &w : workers_) w.join();
}

void ThreadPool::run(int64_t n_tasks, TaskFn fn, void *ctx, bool share) {
    if (tls_running_pool == this) {
        throw std::logic_error("ThreadPool::parallel_for called from inside a task of the same pool");
    }
    if (n_tasks <= 0) return;
    if (n_threads_ == 1 || n_tasks == 1 || !share) {  // nothing (worth) sharing: skip the hand-off
        RunningPoolScope scope(this);
        for (int64_t i = 0; i < n_tasks; ++i) fn(ctx, i, 0);
        return;
    }

    std::lock_guard<std::mutex> call(call_mutex_);
    job_fn_ = fn;
    job_ctx_ = ctx;
    job_n_tasks_ = n_tasks;
    next_task_.store(0);
    job_open_.store(true);     // publishes the job fields above
    generation_.fetch_add(1);
    if (n_sleeping_.load() > 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        wake_cv_.notify_all();
    }

    run_tasks(0);
    job_open_.store(false);

    if (!spin_until([this] { return n_active_.load() == 0; })) {
        std::unique_lock<std::mutex> lock(mutex_);
        caller_sleeping_.store(true);
        done_cv_.wait(lock, [this] { return n_active_.load() == 0; });
        caller_sleeping_.store(false);
    }

    std::exception_ptr first;
    int64_t first_task = 0;
    for (TaskError &e : job_errors_) {
        if (e.error && (!first || e.task < first_task)) {
            first = e.error;
            first_task = e.task;
        }
        e.error = nullptr;
    }
    if (first) std::rethrow_exception(first);
}

void ThreadPool::run_tasks(int thread_index) {
    RunningPoolScope scope(this);
    const TaskFn fn = job_fn_;
    void *const ctx = job_ctx_;
    const int64_t n_tasks = job_n_tasks_;
    int64_t i = next_task_.fetch_add(1);
    try {
        for (; i < n_tasks; i = next_task_.fetch_add(1)) fn(ctx, i, thread_index);
    } catch (...) {
        job_errors_[size_t(thread_index)] = {std::current_exception(), i};
    }
}

void ThreadPool::worker_loop(int thread_index) {
    uint64_t seen = 0;
    for (;;) {
        if (!spin_until([&] { return generation_.load() != seen; })) {
            std::unique_lock<std::mutex> lock(mutex_);
            n_sleeping_.fetch_add(1);
            wake_cv_.wait(lock, [&] { return generation_.load() != seen; });
            n_sleeping_.fetch_sub(1);
        }
        if (stopping_.load()) return;
        seen = generation_.load();
        n_active_.fetch_add(1);
        if (job_open_.load()) run_tasks(thread_index);
        if (n_active_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
            std::lock_guard<std::mutex> lock(mutex_);
            done_cv_.notify_one();
        }
    }
}

}  // namespace flashmtp
