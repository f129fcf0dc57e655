from __future__ import annotations

import pytest
import torch

from twotower.errors import InputError
from twotower.model import TowerConfig, TwoTowerModel, retrieval_loss


def _cfg(**kw: object) -> TowerConfig:
    return TowerConfig(n_items=50, n_tags=20, n_performers=10, n_categorical=(5, 5, 5, 5), **kw)  # type: ignore[arg-type]


def _items(n: int, cfg: TowerConfig) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, cfg.n_items, (n,), generator=g),
        torch.randint(0, cfg.n_tags, (n, cfg.max_tags), generator=g),
        torch.randint(0, cfg.n_performers, (n, cfg.max_performers), generator=g),
        torch.randint(0, 5, (n, 4), generator=g),
        torch.randn(n, cfg.numeric_width, generator=g),
    )


def _users(b: int, cfg: TowerConfig) -> tuple[torch.Tensor, ...]:
    def hist(h: int) -> tuple[torch.Tensor, ...]:
        items = _items(b * h, cfg)
        shaped = tuple(t.reshape(b, h, *t.shape[1:]) for t in items)
        mask = (torch.arange(h)[None, :] < torch.arange(b)[:, None] % (h + 1)).float()
        return (*shaped, mask)

    return (*hist(cfg.max_likes), *hist(cfg.max_nopes), torch.rand(b, cfg.stats_width))


@pytest.mark.parametrize("encoder", ["pooled", "attention"])
@pytest.mark.parametrize("dim", [32, 64, 128])
def test_towers_return_unit_vectors(dim: int, encoder: str) -> None:
    cfg = _cfg(embedding_dim=dim, user_encoder=encoder)
    model = TwoTowerModel(cfg).eval()
    v = model.item_tower(*_items(7, cfg))
    u = model.user_tower(*_users(5, cfg))
    assert v.shape == (7, dim) and u.shape == (5, dim)
    assert torch.allclose(v.norm(dim=-1), torch.ones(7), atol=1e-5)
    assert torch.allclose(u.norm(dim=-1), torch.ones(5), atol=1e-5)  # an empty history too (row 0)


@pytest.mark.parametrize("encoder", ["pooled", "attention"])
def test_fused_and_export_paths_agree(encoder: str) -> None:
    cfg = _cfg(user_encoder=encoder)
    model = TwoTowerModel(cfg).eval()
    users, items = _users(6, cfg), _items(9, cfg)
    fused = model.user_tower(*users), model.item_tower(*items)
    model.encoder.fused = False
    plain = model.user_tower(*users), model.item_tower(*items)
    for a, b in zip(fused, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("encoder", ["pooled", "attention"])
@pytest.mark.parametrize("history_ids", [False, True])
@pytest.mark.parametrize("compact", [False, True])
def test_one_lookup_per_table_for_both_towers_gives_the_same_outputs_and_gradients(
    history_ids: bool, compact: bool, encoder: str
) -> None:
    """Training encodes both towers with one embedding_bag per table; it must equal the towers computed apart
    with plain gathers, forward and backward (the gradients Adam sees). With ``history_ids`` the history reads
    its own ID table: two ID tables in one step. ``compact`` (the CPU trainer's) leaves the zero-weight entries
    out of the lookups: users with no history, and a step where no user has nopes, give empty bags
    (a run of empty bags amid a table's lookup)."""
    cfg = _cfg(history_ids=history_ids, user_encoder=encoder)
    model = TwoTowerModel(cfg).eval()
    model.encoder.compact = compact
    with torch.no_grad():  # non-zero pooling scores, so the learned weights' gradients are exercised too
        model.like_score.weight.normal_(0.0, 0.5)
    users, items = _users(6, cfg), _items(9, cfg)
    if compact:  # no nopes at all: every bag of the nopes' lookups is empty
        users = (*users[:11], torch.zeros_like(users[11]), users[12])

    def run(fused: bool) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        model.zero_grad()
        model.encoder.fused = fused
        outputs = list(model(users, items)) if fused else [model.user_tower(*users), model.item_tower(*items)]
        (outputs[0].sum() * 3 + outputs[1].pow(2).sum() + (outputs[0] @ outputs[1].T).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        # row 0 of a table: the plain gathers' padding_idx keeps it out of the gradient, embedding_bag does not
        # (a missing category, code 0, is trained as one; padding slots weigh 0 in both)
        return outputs, {n: g[1:] if n.startswith("encoder.") and g.dim() == 2 else g for n, g in grads.items()}

    (joint_out, joint_grads), (plain_out, plain_grads) = run(True), run(False)
    for a, b in zip(joint_out, plain_out, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert joint_grads.keys() == plain_grads.keys() and "encoder.ids.weight" in joint_grads
    assert ("encoder.context_ids.weight" in joint_grads) == history_ids
    for name, grad in joint_grads.items():
        # recency_slope: 0 at the start; a nope's position: no user has nopes in the compact case
        assert grad.abs().sum() > 0 or name == "recency_slope" or (compact and "nope_position" in name), name
        scale = max(1.0, float(plain_grads[name].abs().max()))  # float32 sums of terms up to ~100 (the readout's)
        assert torch.allclose(grad, plain_grads[name], atol=1e-5 * scale), name


@pytest.mark.parametrize("encoder", ["pooled", "attention"])
def test_joint_towers_draw_the_same_training_noise_as_the_towers_apart(encoder: str) -> None:
    """In training, the joint call hides the same history slots and IDs as the towers called one after the
    other under the same seed (the heads' dropout is off here: it is drawn per head, after both encodings)."""
    cfg = _cfg(dropout=0.0, id_dropout=0.5, history_dropout=0.5, user_encoder=encoder, attention_dropout=0.0)
    model = TwoTowerModel(cfg).train()
    users, items = _users(6, cfg), _items(9, cfg)
    torch.manual_seed(5)
    joint = model(users, items)
    torch.manual_seed(5)
    apart = model.user_tower(*users), model.item_tower(*items)
    torch.manual_seed(6)
    other = model(users, items)
    for a, b, c in zip(joint, apart, other, strict=True):
        assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c, atol=1e-3)


def test_loss_masks_accidental_hits_and_missing_hard_negatives() -> None:
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    u[2] = u[0]  # two examples of the same user and item in one batch
    v = u.clone()  # each user's positive equals the user: a perfect model
    ids = torch.tensor([1, 2, 1, 3])  # item 1 twice: not a negative for each other
    log_q = torch.zeros(4)
    hard_mask = torch.tensor([True, False, True, False])
    loss = retrieval_loss(u, v, ids, log_q, 0.05, hard=-u, hard_mask=hard_mask)
    assert torch.isfinite(loss)
    # without the accidental-hit mask the duplicate would count as a negative as strong as the positive
    unmasked = torch.nn.functional.cross_entropy(u @ v.T / 0.05, torch.arange(4))
    assert loss < 0.01 and unmasked > 0.3  # two of four rows lose log(2)


def test_logq_correction_favours_rare_items() -> None:
    u = torch.nn.functional.normalize(torch.ones(2, 4), dim=-1)
    v = u.clone()
    ids = torch.tensor([0, 1])
    popular_first = retrieval_loss(u, v, ids, torch.tensor([2.0, -2.0]), 1.0)
    popular_second = retrieval_loss(u, v, ids, torch.tensor([-2.0, 2.0]), 1.0)
    assert torch.isclose(popular_first, popular_second)  # symmetric: correction applied to every column


@pytest.mark.parametrize("dim", [0, 5000, 16])
def test_embedding_dim_bounds(dim: int) -> None:
    with pytest.raises(InputError, match="embedding-dim"):
        TowerConfig(embedding_dim=dim)


def test_learned_pooling_starts_as_the_mean() -> None:
    torch.manual_seed(0)
    mean = TwoTowerModel(_cfg(history_pooling="mean")).eval()
    learned = TwoTowerModel(_cfg(history_pooling="learned")).eval()
    missing = learned.load_state_dict(mean.state_dict(), strict=False).missing_keys
    assert set(missing) == {"like_score.weight", "recency_slope"}
    users = _users(6, _cfg())
    assert torch.allclose(mean.user_tower(*users), learned.user_tower(*users), atol=1e-6)
    with torch.no_grad():  # a recency slope weighs the most recent likes more: the embedding moves
        learned.recency_slope.fill_(1.0)
    assert not torch.allclose(mean.user_tower(*users), learned.user_tower(*users), atol=1e-3)


def test_history_ids_are_apart_from_candidate_ids() -> None:
    cfg = _cfg(history_ids=True)
    model = TwoTowerModel(cfg).eval()
    users, items = _users(6, cfg), _items(9, cfg)
    u0, v0 = model.user_tower(*users), model.item_tower(*items)
    with torch.no_grad():
        assert model.encoder.context_ids is not None
        model.encoder.context_ids.weight.add_(0.5)
    assert torch.equal(model.item_tower(*items), v0)  # candidates use their own ID embeddings
    assert not torch.allclose(model.user_tower(*users), u0, atol=1e-3)  # the history reads the context ones
    with torch.no_grad():
        model.encoder.ids.weight.add_(0.5)
    assert not torch.allclose(model.item_tower(*items), v0, atol=1e-3)


def test_history_dropout_only_in_training() -> None:
    cfg = _cfg(history_dropout=0.5)
    model = TwoTowerModel(cfg).eval()
    users = _users(6, cfg)
    assert torch.equal(model.user_tower(*users), model.user_tower(*users))
    model.train()
    torch.manual_seed(1)
    a = model.user_tower(*users)
    torch.manual_seed(2)
    assert not torch.allclose(a, model.user_tower(*users))


def test_loss_never_counts_a_users_own_likes_as_negatives() -> None:
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    uniform = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    ids, uniform_ids, log_q = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5, 6]), torch.zeros(3)
    # user 0 also liked items 1 (in batch) and 4 (uniform); user 1 liked item 1 (its own positive); item 9 is no
    # candidate at all
    liked = (torch.tensor([0, 0, 1, 2]), torch.tensor([1, 4, 1, 9]))
    masked = retrieval_loss(u, v, ids, log_q, 0.1, uniform=uniform, uniform_ids=uniform_ids, liked=liked)
    # by hand: user 0 without the columns of items 1 and 4; the others unchanged (own positive kept)
    logits = torch.cat([u @ v.T, u @ uniform.T], dim=1) / 0.1
    logits[0, 1] = logits[0, 4] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, ids)
    assert torch.isclose(masked, expected, atol=1e-6)
    assert not torch.isclose(masked, retrieval_loss(u, v, ids, log_q, 0.1, uniform=uniform, uniform_ids=uniform_ids))


@pytest.mark.parametrize("catalog_size", [None, 40])
def test_liked_mask_matches_a_brute_force_one(catalog_size: int | None) -> None:
    """The mask of liked candidates, with repeated candidates (in-batch positives repeat) and liked items that
    are no candidate, equals the obvious double loop."""
    from twotower.model.loss import _liked_columns

    g = torch.Generator().manual_seed(3)
    columns = torch.randint(0, 40, (60,), generator=g)  # repeats certain
    rows, items = torch.randint(0, 7, (90,), generator=g), torch.randint(0, 40, (90,), generator=g)
    mask = _liked_columns((rows, items), 7, columns, catalog_size)
    pairs = set(zip(rows.tolist(), items.tolist(), strict=True))
    expected = torch.tensor([[(r, c) in pairs for c in columns.tolist()] for r in range(7)])
    assert torch.equal(mask, expected) and expected.any() and not expected.all()


@pytest.mark.parametrize(
    ("field", "value"),
    [("history_pooling", "max"), ("history_dropout", 1.0), ("next_likes", 0), ("next_likes", 65),
     ("user_encoder", "lstm"), ("attention_dropout", 1.0), ("attention_heads", 3), ("attention_layers", 0)],
)  # fmt: skip
def test_new_switches_are_checked(field: str, value: object) -> None:
    with pytest.raises(InputError, match=field):
        _cfg(**{field: value})


def test_configs_saved_before_the_new_fields_load_as_they_were() -> None:
    old = {k: v for k, v in _cfg().to_json().items()
           if k not in ("history_ids", "history_pooling", "history_dropout", "mask_likes", "next_likes")}  # fmt: skip
    cfg = TowerConfig.from_json(old)
    assert (cfg.history_pooling, cfg.history_dropout, cfg.mask_likes, cfg.history_ids) == ("mean", 0.0, False, False)
    assert cfg.next_likes == 1  # trained on the next like only
    assert TowerConfig.from_json(_cfg().to_json()) == _cfg()


def _loss_by_hand(u, v, ids, log_q, uniform, uniform_ids, hard, hard_mask, groups, liked, t):  # type: ignore[no-untyped-def]
    """Each positive's cross-entropy over itself and its row's negatives, one positive at a time."""
    liked_by = {(int(r), int(i)) for r, i in zip(*liked, strict=True)}
    losses = []
    for j, r in enumerate(groups.tolist()):
        own_items = {int(ids[i]) for i in range(len(ids)) if int(groups[i]) == r}
        row = [u[r] @ v[j] / t - log_q[j]]
        for c in range(len(ids)):
            if int(ids[c]) not in own_items and (r, int(ids[c])) not in liked_by:
                row.append(u[r] @ v[c] / t - log_q[c])
        for c in range(len(uniform_ids)):
            if int(uniform_ids[c]) not in own_items and (r, int(uniform_ids[c])) not in liked_by:
                row.append(u[r] @ uniform[c] / t)
        if hard_mask[r]:
            row.append(u[r] @ hard[r] / t)
        logits = torch.stack(row)
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


def test_loss_of_several_positives_per_user_state_matches_one_positive_at_a_time() -> None:
    """Three user states with two positives each: every positive is scored against its row's negatives only —
    never its own row's other positives, their repeats among the candidates or the row's liked items."""
    g = torch.Generator().manual_seed(4)
    u = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1).requires_grad_()
    v = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    uniform = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    hard = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    ids = torch.tensor([1, 2, 3, 1, 4, 5])  # item 1 is a positive of rows 0 and 1
    uniform_ids = torch.tensor([2, 6, 7, 8, 5])  # items 2 and 5 are also rows 0's and 2's positives
    log_q = torch.randn(6, generator=g)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    hard_mask = torch.tensor([True, False, True])
    liked = (torch.tensor([0, 2, 2]), torch.tensor([7, 3, 9]))  # item 9 is no candidate
    got = retrieval_loss(u, v, ids, log_q, 0.1, uniform=uniform, uniform_ids=uniform_ids, uniform_log_q=0.0,
                         hard=hard, hard_mask=hard_mask, groups=groups, liked=liked)  # fmt: skip
    expected = _loss_by_hand(u, v, ids, log_q, uniform, uniform_ids, hard, hard_mask, groups, liked, 0.1)
    assert torch.isclose(got, expected, atol=1e-5)
    (grad,) = torch.autograd.grad(got, u)
    (expected_grad,) = torch.autograd.grad(expected, u)
    assert torch.allclose(grad, expected_grad, atol=1e-5)
    # a row whose candidates are all its own positives has no negatives: a zero loss and a finite gradient
    alone = retrieval_loss(u[:1], v[:2], ids[:2], log_q[:2], 0.1, groups=torch.tensor([0, 0]))
    assert alone == 0 and torch.isfinite(torch.autograd.grad(alone, u)[0]).all()


@pytest.mark.parametrize("sampled", [{"history": "profile"}, {"target_window": 4}])
def test_next_likes_and_sampled_targets_are_exclusive(sampled: dict[str, object]) -> None:
    assert _cfg().next_likes == 3 and _cfg(**sampled).next_likes == 1  # the default follows the objective
    with pytest.raises(InputError, match="set next_likes=1"):
        _cfg(next_likes=2, **sampled)
    assert TowerConfig.from_json(_cfg(**sampled).to_json()) == _cfg(**sampled)


def test_the_attention_tower_reads_the_order_of_the_history() -> None:
    """The same likes in another order: one vector for the pooled tower (a plain mean, no latest-likes
    channel), another for the attention tower, whose tokens carry their positions."""
    users = None
    for encoder in ("pooled", "attention"):
        cfg = _cfg(user_encoder=encoder, history_pooling="mean", recent_likes=0)
        model = TwoTowerModel(cfg).eval()
        users = users or _users(6, cfg)
        likes = users[:6]
        order = torch.arange(cfg.max_likes - 1, -1, -1)  # reversed; row 5's 5 likes fill slots 0-4
        full = torch.ones_like(likes[5])
        reversed_users = (*[t[:, order] for t in likes[:5]], full, *users[6:])
        as_is = (*likes[:5], full, *users[6:])
        a, b = model.user_tower(*as_is), model.user_tower(*reversed_users)
        assert torch.allclose(a, b, atol=1e-5) == (encoder == "pooled"), encoder


def test_padding_slots_are_invisible_to_the_attention_tower() -> None:
    """Slots with mask 0 change nothing, whatever they hold: a history padded further (a server may pass any
    length) gives the same vector, longer than the position tables included."""
    cfg = _cfg(user_encoder="attention", max_likes=6, max_nopes=3)
    model = TwoTowerModel(cfg).eval()
    users = _users(5, cfg)
    extra = _users(5, _cfg(user_encoder="attention", max_likes=4, max_nopes=2))

    def padded(part: tuple[torch.Tensor, ...], more: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        *fields, mask = part
        *junk, _ = more
        return [*(torch.cat([f, j], dim=1) for f, j in zip(fields, junk, strict=True)),
                torch.cat([mask, torch.zeros_like(more[-1])], dim=1)]  # fmt: skip

    longer = (*padded(users[:6], extra[:6]), *padded(users[6:12], extra[6:12]), users[12])
    assert longer[0].shape[1] == 10 > cfg.max_likes
    assert torch.allclose(model.user_tower(*users), model.user_tower(*longer), atol=1e-5)
