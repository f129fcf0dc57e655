"""What the evaluation ranks with: the ``Scorer`` protocol and the baselines every model is compared to.

A scorer learns from ``split.train`` only and scores users against the whole catalog. The baselines:

- ``RandomScorer``: a uniformly random ranking (the floor every model must clear, the cold slices above all).
- ``PopularityScorer``: how often each video was liked in training (the same list for everyone).
- ``LinearScorer``: the "simple linear model": the user is the mean of their liked videos' content features,
  videos are ranked by cosine to it. ``served_linear`` is the one variant every figure uses: the model the API
  falls back to (``serve/linear.py``), so the deploy gate certifies what production actually serves.
- ``EASEScorer``: Steck's closed-form item-item model (WWW 2019), a strong collaborative baseline for
  catalogs small enough for a dense item×item inverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from twotower.errors import InputError, TwoTowerError
from twotower.evaluation.split import Split

__all__ = [
    "EASE_MAX_ITEMS",
    "EASEScorer",
    "LinearScorer",
    "PopularityScorer",
    "RandomScorer",
    "Scorer",
    "served_linear",
    "tag_matrix",
    "train_likes_matrix",
]

EASE_MAX_ITEMS = 20_000  # the dense item×item inverse: ~3 GB of float64 at this size
FloatMatrix: TypeAlias = npt.NDArray[np.float32]
Features: TypeAlias = npt.NDArray[np.floating] | sp.csr_matrix | sp.csr_array


@runtime_checkable
class Scorer(Protocol):
    """Anything the evaluation can rank with. Scores are only compared within one user's row."""

    name: str
    n_items: int  # the catalog size: scores cover every video, in catalog order

    def fit(self, split: Split) -> None:
        """Learn from the ``split.train`` rows only (never ``split.test``)."""
        ...

    def score(self, users: npt.NDArray[np.integer]) -> FloatMatrix:
        """``[len(users), n_items]`` float32, higher is better. ``users`` index ``split.log.user_ids``.

        Return a fresh array each call: the evaluation overwrites the training likes in place.
        """
        ...


def train_likes_matrix(split: Split, n_items: int, recent: int | None = None) -> sp.csr_matrix:
    """Binary ``[n_users, n_items]`` CSR of the training likes (what ranking excludes and models learn); with
    ``recent``, only each user's ``recent`` latest ones (the log is sorted by user, then time)."""
    log = split.log
    idx = np.flatnonzero(split.train & log.like)
    if idx.size and int(log.item[idx].max()) >= n_items:
        raise InputError(f"the decision log has item index {int(log.item[idx].max())}, catalog has {n_items} items")
    if recent is not None:
        users = log.user[idx]
        # likes from this one to the user's last, this one included
        after = np.bincount(users, minlength=log.n_users)[users] - (
            np.arange(idx.size) - np.searchsorted(users, users, side="left")
        )
        idx = idx[after <= recent]
    data = np.ones(idx.size, dtype=np.float32)
    x = sp.csr_matrix((data, (log.user[idx], log.item[idx])), shape=(log.n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0  # a video liked twice is still one like
    return x


def _check_users(users: npt.NDArray[np.integer], n_users: int) -> npt.NDArray[np.intp]:
    index = np.asarray(users, dtype=np.intp)
    if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= n_users)):
        raise InputError(f"users must be a 1-d array of user indices in [0, {n_users})")
    return index


class _Fitted:
    name = "scorer"
    _likes: sp.csr_matrix | None = None

    def _train_likes(self) -> sp.csr_matrix:
        if self._likes is None:
            raise TwoTowerError(f"{self.name}: call fit(split) before score(users)")
        return self._likes


class RandomScorer(_Fitted):
    """Uniform random scores; a user's row depends only on the seed and the user, not on the batch."""

    def __init__(self, n_items: int, seed: int = 0, name: str = "random") -> None:
        self.n_items = n_items
        self.seed = seed
        self.name = name

    def fit(self, split: Split) -> None:
        self._likes = train_likes_matrix(split, self.n_items)

    def score(self, users: npt.NDArray[np.integer]) -> FloatMatrix:
        users = _check_users(users, self._train_likes().shape[0])
        out = np.empty((users.size, self.n_items), dtype=np.float32)
        for row, user in enumerate(users.tolist()):
            out[row] = np.random.default_rng((self.seed, user)).random(self.n_items, dtype=np.float32)
        return out


class PopularityScorer(_Fitted):
    """Count of training likes per video; every user gets the same ranking."""

    def __init__(self, n_items: int, name: str = "popularity") -> None:
        self.n_items = n_items
        self.name = name
        self.counts = np.zeros(n_items, dtype=np.float32)

    def fit(self, split: Split) -> None:
        self._likes = train_likes_matrix(split, self.n_items)
        self.counts = np.asarray(self._likes.sum(axis=0), dtype=np.float32).ravel()

    def score(self, users: npt.NDArray[np.integer]) -> FloatMatrix:
        users = _check_users(users, self._train_likes().shape[0])
        return np.broadcast_to(self.counts, (users.size, self.n_items)).copy()


class LinearScorer(_Fitted):
    """User vector = mean of the profile rows of the user's training likes; score = cosine to each video.

    ``item_features`` is ``[n_items, F]`` (dense or CSR), already normalised the way the app does it;
    ``profile_features`` (default: the same) is what one like adds to the user's profile, and with
    ``recent_likes`` only the user's most recent training likes count.
    A user with no training likes has a zero vector, so every video scores 0 for them: the ranking is then
    only the evaluation's tie-break (catalog order), deliberately not popularity, which is its own baseline.
    Videos with an all-zero feature row score 0 for everyone.
    """

    def __init__(
        self,
        item_features: Features,
        name: str = "linear",
        *,
        profile_features: Features | None = None,
        recent_likes: int | None = None,
    ) -> None:
        if item_features.ndim != 2:
            raise InputError(f"item_features must be [n_items, F], got {item_features.ndim} dimensions")
        if profile_features is not None and profile_features.shape != item_features.shape:
            raise InputError(f"profile_features must be {item_features.shape}, got {profile_features.shape}")
        if recent_likes is not None and recent_likes < 1:
            raise InputError(f"recent_likes must be at least 1, got {recent_likes}")
        self.name = name
        self.recent_likes = recent_likes
        self.n_items = int(item_features.shape[0])
        if sp.issparse(item_features):
            feats = sp.csr_matrix(item_features, dtype=np.float32)
            norms = np.sqrt(np.asarray(feats.multiply(feats).sum(axis=1), dtype=np.float64).ravel())
        else:
            feats = np.asarray(item_features, dtype=np.float32)
            norms = np.linalg.norm(feats.astype(np.float64), axis=1)
        if not np.isfinite(norms).all():
            raise InputError("item_features has NaN or infinite values")
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
        self._unit = sp.diags(inv).tocsr() @ feats if sp.issparse(feats) else feats * inv[:, None]
        if profile_features is None:
            self._features = feats
        elif sp.issparse(profile_features):
            self._features = sp.csr_matrix(profile_features, dtype=np.float32)
        else:
            self._features = np.asarray(profile_features, dtype=np.float32)

    def fit(self, split: Split) -> None:
        likes = train_likes_matrix(split, self.n_items)
        self._likes = likes
        if self.recent_likes is not None:
            likes = train_likes_matrix(split, self.n_items, self.recent_likes)
        counts = np.asarray(likes.sum(axis=1), dtype=np.float64).ravel()
        inv = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
        self._mean = sp.diags(inv.astype(np.float32)).tocsr() @ likes  # row-normalised: one row = one mean

    def score(self, users: npt.NDArray[np.integer]) -> FloatMatrix:
        users = _check_users(users, self._train_likes().shape[0])
        user_vec = self._mean[users] @ self._features  # [batch, F]
        user_vec = user_vec.toarray() if sp.issparse(user_vec) else np.asarray(user_vec)
        norms = np.linalg.norm(user_vec, axis=1)
        user_vec = user_vec / np.where(norms > 0, norms, 1.0)[:, None]
        if sp.issparse(self._unit):
            scores = np.asarray((self._unit @ user_vec.T).T)
        else:
            scores = user_vec @ np.asarray(self._unit).T
        return np.ascontiguousarray(scores, dtype=np.float32)


class EASEScorer(_Fitted):
    """EASE: ``B = I - P diag(1/diag(P))`` with ``P = (XᵀX + λI)⁻¹``, ``diag(B) = 0``; score = ``x_u B``.

    ``X`` is the binary user×video matrix of training likes. The Gram matrix is restricted to videos with at
    least one training like (the others have zero rows and columns in ``XᵀX`` and would score 0 anyway).
    The inverse is dense, hence the refusal above ``max_items`` catalog videos.
    """

    def __init__(self, n_items: int, lam: float = 200.0, max_items: int = EASE_MAX_ITEMS, name: str = "ease") -> None:
        if n_items > max_items:
            raise InputError(
                f"EASE needs a dense item×item inverse: the catalog has {n_items:,} videos, at most "
                f"{max_items:,} are supported (max_items); use popularity or the linear baseline instead"
            )
        if not lam > 0:
            raise InputError(f"EASE regularisation lam must be > 0, got {lam}")
        self.n_items = n_items
        self.lam = float(lam)
        self.name = name
        self.items = np.zeros(0, dtype=np.intp)  # the videos the model covers (>= 1 training like)
        self.weights = np.zeros((0, 0), dtype=np.float32)

    def fit(self, split: Split) -> None:
        likes = train_likes_matrix(split, self.n_items)
        self.items = np.flatnonzero(np.diff(likes.tocsc().indptr) > 0)
        x = likes[:, self.items].astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.lam
        b = np.linalg.inv(gram)
        del gram  # at 20k videos each dense float64 matrix is 3.2 GB: keep one alive at a time
        b /= -b.diagonal().copy()[None, :]  # B = -P / diag(P), column by column
        np.fill_diagonal(b, 0.0)
        self.weights = b.astype(np.float32)
        self._likes = likes
        self._covered = likes[:, self.items].tocsr()

    def score(self, users: npt.NDArray[np.integer]) -> FloatMatrix:
        users = _check_users(users, self._train_likes().shape[0])
        out = np.zeros((users.size, self.n_items), dtype=np.float32)
        out[:, self.items] = np.asarray(self._covered[users] @ self.weights)
        return out


# the served linear model reads a user's 50 most recent likes (serve/linear.py and the SQL in serve/recommend.py)
SERVED_RECENT_LIKES = 50


def served_linear(tags: Sequence[Sequence[str]], name: str = "linear") -> LinearScorer:
    """The linear model the API serves: a user's profile counts the tags of their 50 most recent likes, a video
    scores the profile's weight on its tags over the square root of its tag count (the same ranking as the
    cosine between the profile and the video's L2-normalised multi-hot tags)."""
    return LinearScorer(
        tag_matrix(tags), name, profile_features=tag_matrix(tags, normalised=False), recent_likes=SERVED_RECENT_LIKES
    )


def tag_matrix(tags: Sequence[Sequence[str]], *, normalised: bool = True) -> sp.csr_matrix:
    """Multi-hot ``[n_items, n_tags]`` CSR of tag lists (e.g. ``catalog.tags``), L2-normalised rows by default."""
    vocab: dict[str, int] = {}
    indptr = [0]
    indices: list[int] = []
    for item_tags in tags:
        cols = sorted({vocab.setdefault(t, len(vocab)) for t in item_tags})
        indices.extend(cols)
        indptr.append(len(indices))
    counts = np.diff(indptr)
    scale = 1.0 / np.sqrt(np.maximum(counts, 1)) if normalised else np.ones(len(counts))
    data = np.repeat(scale, counts).astype(np.float32)
    return sp.csr_matrix((data, np.array(indices, dtype=np.int32), np.array(indptr)), shape=(len(tags), len(vocab)))
