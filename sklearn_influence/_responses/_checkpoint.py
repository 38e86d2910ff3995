"""Resumable long runs: finished chunks of removed points saved through ``memory``.

Response functions and leave-one-out retraining over many removed points run for minutes to
hours. With a ``memory`` (a folder or a ``joblib.Memory``), :class:`ChunkStore` saves each
finished chunk as soon as it is done, keyed by (what identifies the fit, the kind of
response, its settings, the chunk's indices); a run that is interrupted and started again
with the same ``memory`` loads the finished chunks and computes only the others. The chunk
boundaries depend only on the removed points (:func:`checkpoint_chunks`), never on how many
were done or on ``n_jobs``, so the resumed result is bitwise identical to an uninterrupted
run with ``memory``.
"""

import sys
import time

import joblib
import numpy as np
import torch
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import check_memory

from .._engine._gauss_newton import forward_flops_per_row

#: with ``memory``, the removed points are split into at least this many chunks (fewer only
#: when there are fewer points), so that an interruption loses at most ~5% of the work
CHECKPOINT_CHUNKS = 20

#: the longest a chunk may take by the cost model of :func:`copies_within` (seconds): what
#: an interruption loses at most, however many removed points there are
CHUNK_SECONDS = 30.0

#: throughput assumed by the cost model (flop/s) of the batched products: about what a CPU
#: core and a GPU sustain on them. The fixed overhead of each step (small models are bound by
#: it) does not grow with the number of points in a chunk, so splitting cannot shorten it
THROUGHPUT = {"cpu": 1e9, "cuda": 5e10}


def checkpoint_chunks(indices, max_per_chunk):
    """Chunks of ``indices`` fixed by their number only (not by ``n_jobs`` or progress)."""
    indices = np.asarray(indices, dtype=int)
    if len(indices) == 0:
        return []
    n_chunks = max(-(-len(indices) // max_per_chunk), min(len(indices), CHECKPOINT_CHUNKS))
    return [chunk for chunk in np.array_split(indices, n_chunks) if len(chunk)]


def forward_flops(adapter, theta, inputs, *, rows=8):
    """Floating-point operations of one forward pass per training row, counted (not timed)
    by torch's flop counter on a few rows, so that it is the same on every run; at least
    2p (a layer-free model's products are not counted)."""
    return max(forward_flops_per_row(adapter, theta, inputs, rows=rows), 2.0 * theta.numel())


def copies_within(seconds, steps, passes_per_step, flops_per_pass, device):
    """How many removed points one chunk may hold so that it takes at most ``seconds`` by the
    cost model: ``steps`` (the step budget: every point may use all of it) × passes over the
    training rows per step × flops per pass, at :data:`THROUGHPUT` of the device type. Only
    counts, never timings, so chunks do not depend on the machine's load."""
    per_copy = max(float(steps) * float(passes_per_step) * float(flops_per_pass), 1.0)
    return max(1, int(seconds * THROUGHPUT.get(torch.device(device).type, 1e9) // per_copy))


def _numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def problem_fingerprint(adapter, theta, inputs, targets, key=None):
    """A stable hash of what a response depends on: the model family, θˢ, the training data
    (tensors or the raw X, y), the regularizer and the caller's ``key`` (for example the
    estimator and its seed, which fix how a network is retrained)."""
    return joblib.hash(
        (
            type(adapter).__name__,
            _numpy(theta),
            _numpy(inputs),
            _numpy(targets),
            _numpy(adapter.regularizer_diagonal()),
            key,
        )
    )


def chunk_key(chunk):
    """The cache key of a chunk: its row positions, or its groups' members (RemovedGroups)."""
    if hasattr(chunk, "key"):
        return chunk.key()
    return tuple(int(i) for i in chunk)


def _run_chunk(fingerprint, kind, settings, chunk, run, arguments):
    """One chunk; ``fingerprint``, ``kind``, ``settings`` and ``chunk`` are the cache key."""
    return run(*arguments)


def _run_once(fingerprint, kind, what, run, arguments):
    """What all chunks share (the automatic settings); ``fingerprint``, ``kind`` and ``what``
    are the cache key."""
    return run(*arguments)


class ChunkStore:
    """Runs chunks through ``Parallel``, loading finished ones from ``memory`` and saving the
    others as each finishes; reports progress (done/total, time left) when ``verbose``.

    Parameters
    ----------
    memory : None, str or joblib.Memory
        None (or a Memory without a location): nothing is saved.
    fingerprint : str
        From :func:`problem_fingerprint`.
    kind : str
        The response ("pbrf", "prf", "cold_loo", ...).
    settings : dict
        Every setting the result depends on (hashable by joblib).
    name : str
        Label of the progress lines.
    verbose : int
    """

    def __init__(self, memory, fingerprint, kind, settings, *, name, verbose=0):
        self.memory = check_memory(memory)
        self.enabled = getattr(self.memory, "location", None) is not None
        self.fingerprint, self.kind, self.settings = fingerprint, kind, settings
        self.name, self.verbose = name, verbose

    def once(self, what, run, *arguments):
        """``run(*arguments)``, saved in ``memory`` under (fingerprint, kind, ``what``): what
        is computed before the first chunk (the automatic step sizes and scales) is not
        redone by a resumed run. ``what`` must name every input beyond the fit."""
        if not self.enabled:
            return run(*arguments)
        cached = self.memory.cache(_run_once, ignore=["run", "arguments"], verbose=0)
        return cached(self.fingerprint, self.kind, what, run, arguments)

    def _cached(self):
        return self.memory.cache(_run_chunk, ignore=["run", "arguments"], verbose=0)

    def _is_done(self, cached, chunk):
        return cached.check_call_in_cache(
            self.fingerprint, self.kind, self.settings, chunk_key(chunk), None, ()
        )

    def run(self, chunks, run, arguments, *, n_jobs=None):
        """``run(*arguments(number, chunk))`` for each chunk (numbered from 1), in order; a
        list of results."""
        chunks = list(chunks)
        total = sum(len(chunk) for chunk in chunks)
        function = None
        if not self.enabled:
            done_before = [False] * len(chunks)
        else:
            function = self._cached()
            done_before = [self._is_done(function, chunk) for chunk in chunks]
        start, results, done, computed = time.perf_counter(), [], 0, 0
        n_loaded = sum(len(c) for c, was in zip(chunks, done_before, strict=True) if was)
        if self.verbose and n_loaded:
            self._report(f"{n_loaded}/{total} removed points loaded from memory")
        if self.enabled:
            tasks = [
                delayed(function)(
                    self.fingerprint,
                    self.kind,
                    self.settings,
                    chunk_key(chunk),
                    run,
                    arguments(number, chunk),
                )
                for number, chunk in enumerate(chunks, 1)
            ]
        else:  # the chunk function itself (its name shows in a Dask dashboard)
            tasks = [
                delayed(run)(*arguments(number, chunk)) for number, chunk in enumerate(chunks, 1)
            ]
        generator = None
        if self.verbose:
            try:  # results as they finish, for the progress lines
                generator = Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
            except ValueError:  # a backend without generators (multiprocessing); nothing ran
                generator = None
        if generator is None:
            generator = Parallel(n_jobs=n_jobs)(tasks)
        for chunk, was_done, result in zip(chunks, done_before, generator, strict=True):
            results.append(result)
            done += len(chunk)
            if not was_done:
                computed += len(chunk)
            if self.verbose:
                remaining = total - done
                elapsed = time.perf_counter() - start
                left = elapsed / computed * remaining if computed else float("nan")
                estimate = f", about {left:.0f} s left" if computed and remaining else ""
                self._report(f"{done}/{total} removed points done{estimate}")
        return results

    def _report(self, message):
        print(f"[{self.name}] {message}", file=sys.stderr, flush=True)
