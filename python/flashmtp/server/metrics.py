"""Server counters and their Prometheus text exposition (``GET /metrics``).

Throughput is reported two ways because slots share one engine: per-request speed (a request's generated
tokens over its own decode time, which includes waiting for the other slots' forward passes) and aggregate
speed (all generated tokens over the wall time during which at least one request was generating).

MTP: :func:`mtp_counts` reads a generation's draft statistics (GenerateStats.speculative) for the
``flashmtp_mtp_*`` series and the ``usage.flashmtp`` extension; zeros without a draft head.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from flashmtp import _core
from flashmtp.server.logprobs import LoopStats

__all__ = ["Metrics", "mtp_counts"]


def mtp_counts(stats: _core.GenerateStats | LoopStats) -> tuple[int, int]:
    """(drafted, accepted) MTP tokens of a generation (the logprobs loop never drafts)."""
    if isinstance(stats, LoopStats):
        return 0, 0
    return stats.speculative.drafted, stats.speculative.accepted


class Metrics:
    """Counters updated from the event loop and the slot threads (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, HTTP status) -> count
        self.prompt_tokens = 0
        self.reused_tokens = 0
        self.generated_tokens = 0
        self.prefill_s = 0.0
        self.generate_s = 0.0
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.n_running = 0
        self.n_queued = 0
        self._busy_s = 0.0  # wall time with at least one request generating, up to _busy_since
        self._busy_since = 0.0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[endpoint, status] += 1

    def queued(self, delta: int) -> None:
        with self._lock:
            self.n_queued += delta

    def running(self, delta: int) -> None:
        with self._lock:
            now = time.perf_counter()
            if self.n_running > 0:
                self._busy_s += now - self._busy_since
            self._busy_since = now
            self.n_running += delta

    def generated(self, stats: _core.GenerateStats | LoopStats) -> None:
        drafted, accepted = mtp_counts(stats)
        with self._lock:
            self.prompt_tokens += stats.n_prompt
            self.reused_tokens += stats.n_reused
            self.generated_tokens += stats.n_generated
            self.prefill_s += stats.prefill_s
            self.generate_s += stats.generate_s
            self.drafted_tokens += drafted
            self.accepted_tokens += accepted

    def busy_seconds(self) -> float:
        with self._lock:
            running = time.perf_counter() - self._busy_since if self.n_running > 0 else 0.0
            return self._busy_s + running

    def prometheus(self, n_slots: int) -> str:
        busy_s = self.busy_seconds()
        with self._lock:
            series: list[tuple[str, str, str, list[tuple[str, Any]]]] = [
                ("flashmtp_requests_total", "counter", "HTTP requests answered, by endpoint and status",
                 [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())]),
                ("flashmtp_prompt_tokens_total", "counter", "prompt tokens of finished generations",
                 [("", self.prompt_tokens)]),
                ("flashmtp_prompt_tokens_reused_total", "counter",
                 "prompt tokens found in a slot's cache, not decoded again", [("", self.reused_tokens)]),
                ("flashmtp_generated_tokens_total", "counter", "sampled tokens",
                 [("", self.generated_tokens)]),
                ("flashmtp_prefill_seconds_total", "counter", "seconds of prompt decoding",
                 [("", self.prefill_s)]),
                ("flashmtp_generate_seconds_total", "counter",
                 "seconds of sampling and decoding, per request (overlapping requests both count)",
                 [("", self.generate_s)]),
                ("flashmtp_busy_seconds_total", "counter",
                 "wall seconds with at least one request generating", [("", busy_s)]),
                ("flashmtp_request_tokens_per_second", "gauge",
                 "mean per-request generation speed: generated tokens / per-request generate seconds",
                 [("", self.generated_tokens / self.generate_s if self.generate_s else 0.0)]),
                ("flashmtp_tokens_per_second", "gauge",
                 "aggregate generation speed: generated tokens / busy seconds",
                 [("", self.generated_tokens / busy_s if busy_s else 0.0)]),
                ("flashmtp_requests_running", "gauge", "requests holding a slot", [("", self.n_running)]),
                ("flashmtp_requests_queued", "gauge", "requests waiting for a slot", [("", self.n_queued)]),
                ("flashmtp_slots", "gauge", "parallel sessions (--parallel)", [("", n_slots)]),
                ("flashmtp_mtp_drafted_tokens_total", "counter", "tokens drafted by the MTP head",
                 [("", self.drafted_tokens)]),
                ("flashmtp_mtp_accepted_tokens_total", "counter", "drafted tokens the model accepted",
                 [("", self.accepted_tokens)]),
                ("flashmtp_mtp_acceptance_ratio", "gauge", "accepted / drafted MTP tokens",
                 [("", self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0)]),
            ]
        lines: list[str] = []
        for name, kind, help_text, samples in series:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{labels} {value:.6g}" if isinstance(value, float) else f"{name}{labels} {value}"
                      for labels, value in samples]
        return "\n".join(lines) + "\n"
