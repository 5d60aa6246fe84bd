// A persistent pool of worker threads for the per-layer parallel loops of the forward pass.
// Owns: the workers (created once, joined in the destructor) and the hand-off of one job at a time.
// Does not own: what the tasks compute, or any per-thread scratch (callers index theirs by thread_index).
//
// Tasks are claimed one at a time from a shared counter, so a thread that the OS has descheduled (other
// processes on the cores) holds up at most the one task it is running: the others take the rest, and a worker
// that has not woken by the time every task is claimed never joins the job. Which thread runs a task is
// therefore not fixed; callers make results independent of it by letting every output element be computed by
// exactly one task, and by indexing per-thread scratch with thread_index (unique among concurrent tasks).
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
    // The caller is thread 0 and takes tasks too. A thread whose task throws claims no more tasks, the others
    // go on, and of the exceptions thrown the one of the lowest task index is rethrown here; the pool stays
    // usable.
    // Calls from several threads are serialised; a call from inside a task of this pool is a logic error.
    template <typename Fn>
    void parallel_for(int64_t n_tasks, Fn &&fn) {
        parallel_for(n_tasks, true, std::forward<Fn>(fn));
    }

    // The same, but every task on the calling thread (as thread 0) unless `share`: a job of a few microseconds
    // runs faster there than handed to the workers (waking them and waiting for the last costs about as much).
    template <typename Fn>
    void parallel_for(int64_t n_tasks, bool share, Fn &&fn) {
        using F = std::remove_reference_t<Fn>;
        run(n_tasks, [](void *ctx, int64_t task, int thread) { (*static_cast<F *>(ctx))(task, thread); },
            const_cast<void *>(static_cast<const void *>(&fn)), share);
    }

private:
    using TaskFn = void (*)(void *ctx, int64_t task_index, int thread_index);

    void run(int64_t n_tasks, TaskFn fn, void *ctx, bool share);
    void run_tasks(int thread_index);  // claims and runs tasks of the current job until none is left
    void worker_loop(int thread_index);
    void stop_workers();

    const int n_threads_;
    std::vector<std::thread> workers_;  // n_threads_ - 1 of them; thread_index = position + 1

    // The current job. Written by the caller while job_open_ is false, read by workers only after they have
    // counted themselves in n_active_ and then seen job_open_ true (release / acquire through job_open_).
    TaskFn job_fn_ = nullptr;
    void *job_ctx_ = nullptr;
    int64_t job_n_tasks_ = 0;
    struct TaskError {
        std::exception_ptr error;
        int64_t task = 0;
    };
    std::vector<TaskError> job_errors_;  // [n_threads_], one slot per thread: no locking needed

    std::atomic<uint64_t> generation_{0};  // bumped once per job; workers wait for it to change
    // The next unclaimed task of the current job, alone on its cache line: every claim takes the line, which
    // must not evict the job fields and flags the other threads read.
    alignas(64) std::atomic<int64_t> next_task_{0};
    char next_task_padding_[64 - sizeof(std::atomic<int64_t>)];
    std::atomic<bool> job_open_{false};    // workers may join the current job
    std::atomic<int> n_active_{0};         // workers that may be reading the job (counted before job_open_)
    std::atomic<int> n_sleeping_{0};       // workers blocked on wake_cv_ (the caller notifies only if > 0)
    std::atomic<bool> caller_sleeping_{false};  // the caller blocks on done_cv_ (the last worker notifies)
    std::atomic<bool> stopping_{false};    // set by the destructor before its final generation bump

    std::mutex mutex_;  // protects the blocking halves of the hand-offs below
    std::condition_variable wake_cv_;  // workers: a new job or stop
    std::condition_variable done_cv_;  // caller: the last worker finished
    std::mutex call_mutex_;            // one job at a time
};

}  // namespace flashmtp
