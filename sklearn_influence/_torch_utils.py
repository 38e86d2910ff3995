"""Small torch helpers: device choice, private seeding, small dense algebra on one thread."""

import contextlib
import threading

import numpy as np
import torch
from sklearn.utils import check_random_state


def resolve_device(device):
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` into a :class:`torch.device`.

    Any other string (``"tpu"``, ``"mps"``, a typo) and a CUDA device without a usable GPU are
    clear errors that name the accepted values, rather than torch's raw message later on.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device={device!r} is not a device sklearn_influence can use. Accepted values: "
            "'cpu', 'cuda', 'cuda:<index>' (for example 'cuda:1') or 'auto' (a GPU when there "
            "is one, else the CPU)."
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but no CUDA GPU is available to torch "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False). Use "
            "device='cpu', or device='auto' to use a GPU only when there is one."
        )
    return resolved


#: torch's global generator is one per process, and torch offers no generator argument for
#: a module's initialisation or for dropout: every use of it by the package (a skorch net's
#: initialisation and training) runs inside :func:`forked_torch_rng`, which holds this lock,
#: so that fits in concurrent threads do not draw from each other's seeds
TORCH_RNG_LOCK = threading.RLock()

#: per thread, the generators of the :func:`seeded_torch` blocks being run (innermost last)
_SEEDED = threading.local()


def _torch_devices():
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@contextlib.contextmanager
def seeded_torch(random_state):
    """A seed from ``random_state`` for the block, without touching torch's global RNG.

    Yields the integer seed. Inside the block (in this thread), :func:`draw_seed` draws the
    seeds of the trainings from a local generator made from it — the values torch's global
    generator seeded with it would give, so fits are those of earlier versions — and the
    trainings that need torch's global generator fork it under :data:`TORCH_RNG_LOCK`
    (:func:`forked_torch_rng`). Concurrent fits in threads therefore equal serial fits, and
    the user's global RNG is never changed.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._torch_utils import draw_seed, seeded_torch
    >>> state = torch.random.get_rng_state()
    >>> with seeded_torch(0) as seed:
    ...     first = draw_seed()
    >>> with seeded_torch(0):
    ...     again = draw_seed()
    >>> first == again, bool(torch.equal(state, torch.random.get_rng_state()))
    (True, True)
    """
    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    stack = _SEEDED.__dict__.setdefault("stack", [])
    stack.append(torch.Generator().manual_seed(seed))
    try:
        yield seed
    finally:
        stack.pop()


def draw_seed():
    """A seed for one training run: from this thread's innermost :func:`seeded_torch` block,
    else (outside any) from torch's global generator."""
    stack = getattr(_SEEDED, "stack", None)
    generator = stack[-1] if stack else None
    return int(torch.randint(0, 2**31 - 1, (), generator=generator).item())


def seeded_state():
    """The state of this thread's innermost :func:`seeded_torch` generator, or None outside
    any block: with it, a cached fit can leave the generator where the fit itself would have
    (:func:`restore_seeded_state`), so the draws that follow are those of an uncached run."""
    stack = getattr(_SEEDED, "stack", None)
    return stack[-1].get_state() if stack else None


def restore_seeded_state(state):
    """Set this thread's innermost :func:`seeded_torch` generator to ``state`` (from
    :func:`seeded_state`; None: nothing to restore)."""
    stack = getattr(_SEEDED, "stack", None)
    if state is not None and stack:
        stack[-1].set_state(state)


@contextlib.contextmanager
def forked_torch_rng(seed):
    """torch's global RNG seeded with ``seed`` for the block, restored after; one thread at
    a time (:data:`TORCH_RNG_LOCK`), for what only draws from the global generator."""
    with TORCH_RNG_LOCK, torch.random.fork_rng(devices=_torch_devices()):
        torch.manual_seed(seed)
        yield


def array_to_tensor(array, dtype=None, device=None):
    """``torch.as_tensor`` of a numpy array, copying it first when it is read-only.

    Read-only arrays (joblib's memory-mapped inputs in parallel workers, ``np.broadcast_to``
    views) would share memory with a writable tensor, which torch warns about.
    """
    array = np.asarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.as_tensor(array, dtype=dtype, device=device)


def to_numpy(tensor):
    """A float64 numpy copy of a tensor on any device."""
    return tensor.detach().to("cpu", torch.float64).numpy()


#: Forward-mode AD (``torch.func.jvp``) keeps its dual levels in one process-wide stack that
#: must be entered and left in LIFO order, so two threads inside ``jvp`` at once corrupt it
#: ("Trying to access a forward AD level with an invalid index"). Every forward-mode
#: computation of the engine (curvature products, the Nyström row scores) holds this lock.
FORWARD_AD_LOCK = threading.RLock()

_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": None}


@contextlib.contextmanager
def small_dense_algebra():
    """Run small factorizations (m × m, s × s) on one thread.

    Multi-threaded LAPACK on matrices of a few hundred rows is dominated by thread barriers;
    on a busy machine each barrier can cost a scheduler time slice (a 100 × 100 eigh went
    from 1 ms to 0.8 s on a loaded 2-core machine). Nested and concurrent uses share one
    saved thread count, restored by the last to leave.
    """
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])


def float64_gram(left, right=None, *, chunk_bytes=64 * 2**20):
    """``left @ right.T`` accumulated in float64, a block of columns at a time.

    Gram matrices of search directions need float64 accumulation, but a float64 copy of a
    whole (m, p) float32 block is twice its size (800 MB for 100 vectors of 10⁶
    parameters); converting ``chunk_bytes`` worth of columns at a time bounds that.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._torch_utils import float64_gram
    >>> A = torch.randn(3, 1000)
    >>> gram = float64_gram(A, chunk_bytes=800)  # 33 columns per block
    >>> bool(torch.allclose(gram, A.double() @ A.double().T)), gram.dtype
    (True, torch.float64)
    """
    right = left if right is None else right
    if left.dtype == torch.float64 and right.dtype == torch.float64:
        return left @ right.T
    columns = max(1, int(chunk_bytes) // (8 * max(len(left), len(right), 1)))
    gram = torch.zeros((len(left), len(right)), dtype=torch.float64, device=left.device)
    for start in range(0, left.shape[-1], columns):
        stop = start + columns
        gram += left[:, start:stop].to(torch.float64) @ right[:, start:stop].to(torch.float64).T
    return gram


def orthonormal_rows(block):
    """Orthonormal rows spanning the rows of ``block``; numerically dependent rows are dropped.

    Cholesky-QR of the (float64) Gram matrix, applied twice; when the rows are close to
    dependent, an eigendecomposition of the Gram matrix drops the dependent directions.
    """
    for _ in range(2):
        gram = float64_gram(block)
        floor = (100 * torch.finfo(block.dtype).eps) ** 2
        with small_dense_algebra():
            factor, info = torch.linalg.cholesky_ex(gram)
            diagonal = factor.diagonal() ** 2 if int(info) == 0 else None
            # more rows than columns are dependent even when round-off lets Cholesky pass
            square = len(gram) <= block.shape[-1]
            if (
                square
                and diagonal is not None
                and float(diagonal.min()) > floor * float(diagonal.max())
            ):
                transform = torch.linalg.solve_triangular(
                    factor, torch.eye(len(gram), dtype=gram.dtype, device=gram.device), upper=False
                )
            else:
                values, vectors = torch.linalg.eigh(gram)
                keep = values > max(float(values[-1]) * floor, 0.0)
                keep[: max(len(values) - block.shape[-1], 0)] = False  # at most as many as columns
                if not bool(keep.any()):
                    return block[:0]
                transform = (vectors[:, keep] / values[keep].sqrt()).T
        block = transform.to(block.dtype) @ block
    return block
