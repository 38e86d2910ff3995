"""Progress of long work, by scikit-learn's ``verbose`` convention.

* ``verbose=0``: silent (the default);
* ``verbose=1``: one line per stage (fitting the model, the curvature and its solver, the
  streamed influence blocks, a CV fold) with the time it took;
* ``verbose=2``: also one line per block or iteration, with the time elapsed and an
  estimate of the time left;
* ``verbose>=3``: a tqdm progress bar over the blocks instead of the block lines (tqdm is an
  optional extra: ``pip install sklearn-influence[progress]``; without it, the lines of
  ``verbose=2``).

Lines go to standard output, prefixed with the estimator's name, as scikit-learn's own
``verbose`` output does. Reporting happens between blocks, never inside the vectorised work.
"""

import contextlib
import time

_SILENT = None


class Progress:
    """Reports stages and blocks of one estimator's work.

    Parameters
    ----------
    verbose : int, default=0
        The verbosity (see the module notes).
    name : str, default=""
        The prefix of every line (the estimator's class name).

    Examples
    --------
    >>> from sklearn_influence._progress import Progress
    >>> progress = Progress(2, name="Demo")
    >>> with progress.stage("curvature"):
    ...     blocks = list(progress.blocks(range(2), total=2, label="training block"))
    [Demo] training block 1/2 ... left)
    [Demo] training block 2/2 ...
    [Demo] curvature done in ... s
    >>> list(Progress(0).blocks(range(3), total=3))  # silent: the items only
    [0, 1, 2]
    """

    def __init__(self, verbose=0, name=""):
        self.verbose = int(verbose or 0)
        self.name = name

    def __bool__(self):
        return self.verbose > 0

    def line(self, message):
        """Print one line (verbose ≥ 1)."""
        if self.verbose >= 1:
            print(f"[{self.name}] {message}", flush=True)

    @contextlib.contextmanager
    def stage(self, label):
        """Time the work inside the context; one line when it ends (verbose ≥ 1)."""
        start = time.perf_counter()
        yield
        self.line(f"{label} done in {time.perf_counter() - start:.2f} s")

    def blocks(self, iterable, total=None, label="block"):
        """Yield the items of ``iterable``, reporting each (verbose ≥ 2) or a bar (≥ 3)."""
        if self.verbose < 2:
            yield from iterable
            return
        if self.verbose >= 3:
            bar = _tqdm_bar(total, f"[{self.name}] {label}")
            if bar is not None:
                with bar:
                    for item in iterable:
                        yield item
                        bar.update()
                return
        start = time.perf_counter()
        for done, item in enumerate(iterable, 1):
            yield item
            elapsed = time.perf_counter() - start
            of = f"/{total}" if total else ""
            left = ""
            if total and done < total:
                left = f", about {elapsed / done * (total - done):.1f} s left"
            self.line(f"{label} {done}{of} ({elapsed:.1f} s{left})")


def _tqdm_bar(total, description):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the optional extra is not installed: the lines instead
        return None
    return tqdm(total=total, desc=description, leave=False)


def get_progress(owner):
    """The :class:`Progress` of an object that may carry one (silent otherwise)."""
    return getattr(owner, "progress", None) or Progress(0)
