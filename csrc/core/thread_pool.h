// A persistent pool of worker threads for the per-layer parallel loops of the forward pass.
// Owns: the workers (created once, joined in the destructor) and the hand-off of one job at a time.
// Does not own: what the tasks compute, or any per-thread scratch (callers index theirs by thread_index).
//
// Partitioning is static: task i of a job with n tasks always runs on the same thread for a given pool size,
// thread t taking the contiguous range [t * n / n_threads, (t + 1) * n / n_threads). Callers make results
// independent of the thread count by letting every output element be computed by exactly one task.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace flashmtp {

class ThreadPool {
public:
    // n_threads counts the calling thread: ThreadPool(1) starts no thread and runs every job inline.
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool &) = delete;
    ThreadPool &operator=(const ThreadPool &) = delete;

    int n_threads() const { return n_threads_; }

    // Runs fn(task_index, thread_index) for every task_index in [0, n_tasks) and returns when all are done.
    // The caller is thread 0 and runs its share. If tasks throw, the other threads finish their ranges and
    // the exception of the lowest-numbered thread is rethrown here; the pool stays usable.
    // Calls from several threads are serialised; a call from inside a task of this pool is a logic error.
    template <typename Fn>
    void parallel_for(int64_t n_tasks, Fn &&fn) {
        using F = std::remove_reference_t<Fn>;
        run(n_tasks, [](void *ctx, int64_t task, int thread) { (*static_cast<F *>(ctx))(task, thread); },
            const_cast<void *>(static_cast<const void *>(&fn)));
    }

private:
    using TaskFn = void (*)(void *ctx, int64_t task_index, int thread_index);

    void run(int64_t n_tasks, TaskFn fn, void *ctx);
    void run_share(int thread_index);  // this thread's static range of the current job
    void worker_loop(int thread_index);
    void stop_workers();

    const int n_threads_;
    std::vector<std::thread> workers_;  // n_threads_ - 1 of them; thread_index = position + 1

    // The current job. Written by the caller before it bumps generation_, read by workers after they see the
    // new generation (release / acquire through generation_).
    TaskFn job_fn_ = nullptr;
    void *job_ctx_ = nullptr;
    int64_t job_n_tasks_ = 0;
    std::vector<std::exception_ptr> job_errors_;  // [n_threads_], one slot per thread: no locking needed

    std::atomic<uint64_t> generation_{0};  // bumped once per job; workers wait for it to change
    std::atomic<int> n_running_{0};        // workers still inside the current job
    std::atomic<int> n_sleeping_{0};       // workers blocked on wake_cv_ (the caller notifies only if > 0)
    std::atomic<bool> caller_sleeping_{false};  // the caller blocks on done_cv_ (the last worker notifies)
    std::atomic<bool> stopping_{false};    // set by the destructor before its final generation bump

    std::mutex mutex_;  // protects the blocking halves of the hand-offs below
    std::condition_variable wake_cv_;  // workers: a new job or stop
    std::condition_variable done_cv_;  // caller: the last worker finished
    std::mutex call_mutex_;            // one job at a time
};

}  // namespace flashmtp
