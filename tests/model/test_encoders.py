"""HSTU and SASRec encoders: jagged == per-sequence, batch independence, causality."""

from __future__ import annotations

import pytest
import torch

from model.base import last_states, query_timestamps, select_targets
from model.hstu import HSTU, HSTUConfig, hstu_form
from model.jagged import JaggedBatch
from model.sasrec import SASRec, SASRecConfig

NUM_ROWS = 30
MAX_LEN = 12


def make_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind.startswith("hstu"):
        model = HSTU(
            HSTUConfig(
                NUM_ROWS,
                embedding_dim=16,
                num_layers=2,
                num_heads=2,
                max_len=MAX_LEN,
                attention_backend="reference",
                layer_norm="plain" if kind == "hstu-plain" else "affine",
                # the ranking form: concatenated output, dlrm_v3's scale, biases starting at 1
                **hstu_form(kind == "hstu-ranking", 16, num_heads=2),
            )
        )
        with torch.no_grad():  # make the time bias matter so the timestamp tests can fail
            for layer in model.layers:
                layer.time_bias.copy_(torch.linspace(-2.0, 2.0, layer.time_bias.numel()))
    else:
        style = "reference" if kind == "sasrec-reference" else "genrec"
        model = SASRec(
            SASRecConfig(
                NUM_ROWS, embedding_dim=16, num_layers=2, num_heads=2, max_len=MAX_LEN, style=style
            )
        )
    return model.eval()


def random_sequences(gen: torch.Generator, lengths: list[int]) -> tuple[list, list]:
    items = [torch.randint(1, NUM_ROWS, (n,), generator=gen).tolist() for n in lengths]
    times = []
    for n in lengths:
        gaps = torch.randint(1, 100_000, (n,), generator=gen)
        times.append((1_600_000_000 + torch.cumsum(gaps, 0)).tolist())
    return items, times


KINDS = ["hstu", "hstu-plain", "hstu-ranking", "sasrec", "sasrec-reference"]


@pytest.mark.parametrize("kind", KINDS)
def test_jagged_batch_equals_each_sequence_alone(kind: str) -> None:
    model = make_model(kind)
    gen = torch.Generator().manual_seed(1)
    lengths = [5, 1, MAX_LEN, 3]
    items, times = random_sequences(gen, lengths)
    batch = JaggedBatch.from_lists(items, times)
    with torch.no_grad():
        states = model.encode(batch)
        assert states.shape == (sum(lengths), 16)
        torch.testing.assert_close(states.norm(dim=-1), torch.ones(sum(lengths)))
        for b in range(len(lengths)):
            alone = model.encode(JaggedBatch.from_lists([items[b]], [times[b]]))
            lo, hi = int(batch.offsets[b]), int(batch.offsets[b + 1])
            torch.testing.assert_close(states[lo:hi], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_output_does_not_depend_on_other_sequences(kind: str) -> None:
    model = make_model(kind)
    gen = torch.Generator().manual_seed(2)
    items, times = random_sequences(gen, [6, 4])
    other_items, other_times = random_sequences(gen, [MAX_LEN, 2, 9])
    with torch.no_grad():
        a = model.encode(JaggedBatch.from_lists([items[0], items[1]], [times[0], times[1]]))
        b = model.encode(
            JaggedBatch.from_lists([other_items[0], items[0]], [other_times[0], times[0]])
        )
    torch.testing.assert_close(a[:6], b[MAX_LEN:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("i", [0, 3, 6])
def test_causality(kind: str, i: int) -> None:
    """Output at position i is unchanged by the items and actions of events i+1.. and by
    the timestamps of events i+2..; only HSTU reads t_{i+1} (the time of the predicted
    event), which is checked separately below."""
    model = make_model(kind)
    gen = torch.Generator().manual_seed(3)
    items, times = random_sequences(gen, [8])
    new_items = items[0][: i + 1] + torch.randint(1, NUM_ROWS, (7 - i,), generator=gen).tolist()
    new_times = times[0][: i + 2] + [t + 12_345 for t in times[0][i + 2 :]]
    before = JaggedBatch.from_lists(items, times, action_types=[[0] * 8])
    after = JaggedBatch.from_lists(
        [new_items], [new_times], action_types=[[0] * (i + 1) + [3] * (7 - i)]
    )
    assert new_items != items[0]
    with torch.no_grad():
        a, b = model.encode(before), model.encode(after)
    torch.testing.assert_close(a[: i + 1], b[: i + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[i + 1 :], b[i + 1 :], atol=1e-4)


def test_hstu_position_i_reads_the_time_of_the_predicted_event() -> None:
    model = make_model("hstu")
    items, times = [[3, 5, 7, 9]], [[100, 200, 300, 400]]
    later = [[100, 200, 300 + 10_000_000, 400 + 10_000_000]]
    with torch.no_grad():
        a = model.encode(JaggedBatch.from_lists(items, times))
        b = model.encode(JaggedBatch.from_lists(items, later))
    torch.testing.assert_close(a[:1], b[:1])  # position 0 predicts event 1, whose time is kept
    assert not torch.allclose(a[1], b[1], atol=1e-4)  # position 1 predicts event 2 (moved)


def test_hstu_last_position_uses_query_time() -> None:
    model = make_model("hstu")
    batch = JaggedBatch.from_lists([[3, 5, 7]], [[100, 200, 300]])
    asked = batch.with_fields(query_time=torch.tensor([300 + 5_000_000]))
    torch.testing.assert_close(query_timestamps(batch), torch.tensor([200, 300, 300]))
    torch.testing.assert_close(query_timestamps(asked), torch.tensor([200, 300, 5_000_300]))
    with torch.no_grad():
        a, b = model.encode(batch), model.encode(asked)
    torch.testing.assert_close(a[:2], b[:2])
    assert not torch.allclose(a[2], b[2], atol=1e-4)


def test_select_targets_pairs_each_target_with_previous_state() -> None:
    batch = JaggedBatch.from_lists(
        [[4, 0, 6], [7, 8]], [[1, 2, 3], [1, 2]], weights=[[1, 1, 2], [1, 3]]
    )
    states = torch.arange(5, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    t = select_targets(batch, states)
    # default targets: rows 1, 2, 4; row 1 has item 0 (unknown) and is skipped
    assert t.positions.tolist() == [2, 4]
    assert t.items.tolist() == [6, 8]
    assert t.queries[:, 0].tolist() == [1.0, 3.0]
    assert t.weights is not None and t.weights.tolist() == [2.0, 3.0]
    assert last_states(batch, states)[:, 0].tolist() == [2.0, 4.0]


def test_select_targets_rejects_first_event_target() -> None:
    batch = JaggedBatch.from_lists([[4, 5], [7]], [[1, 2], [1]])
    batch = batch.with_fields(is_target=torch.tensor([False, True, True]))
    with pytest.raises(ValueError, match="row 2, the first event"):
        select_targets(batch, torch.zeros(3, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_reset_item_rows_and_limits(kind: str) -> None:
    model = make_model(kind)
    before = model.item_emb.weight.detach().clone()
    model.reset_item_rows(torch.tensor([0, 3, 7]))
    after = model.item_emb.weight.detach()
    changed = (before != after).any(dim=1).nonzero().squeeze(1).tolist()
    assert changed == [3, 7]
    assert float(after[0].abs().sum()) == 0.0
    assert model.item_embeddings().shape == (NUM_ROWS, 16)
    too_long = JaggedBatch.from_lists([[1] * (MAX_LEN + 1)], [list(range(MAX_LEN + 1))])
    with pytest.raises(ValueError, match="max_len"):
        model.encode(too_long)
    with pytest.raises(ValueError, match="outside the item table"):
        model.encode(JaggedBatch.from_lists([[NUM_ROWS]], [[1]]))


@pytest.mark.parametrize("kind", KINDS)
def test_reference_init_follows_the_research_code(kind: str) -> None:
    model = make_model(kind)
    model.reference_init()
    item = model.item_emb.weight.detach()
    assert torch.equal(item[0], torch.zeros_like(item[0]))
    assert float(item[1:].abs().max()) <= 2 * 0.02 + 1e-6  # truncated at 2 std
    assert abs(float(item[1:].std()) - 0.02) < 0.01
    # xavier normal for the position table: std sqrt(2 / (fan_in + fan_out))
    expected = (2.0 / (MAX_LEN + 16)) ** 0.5
    assert abs(float(model.pos_emb.weight.detach().std()) - expected) < 0.35 * expected
    if kind.startswith("hstu"):
        for layer in model.layers:
            assert torch.equal(layer.uvqk.bias, torch.zeros_like(layer.uvqk.bias))
            assert not layer.uvqk.bias.requires_grad  # the reference has no bias there
            assert abs(float(layer.uvqk.weight.detach().std()) - 0.02) < 0.005


def test_plain_hstu_layer_norms_have_no_parameters() -> None:
    plain, affine = make_model("hstu-plain"), make_model("hstu")
    names = {n for n, _ in plain.named_parameters()}
    assert not any("norm" in n for n in names)
    assert {n for n, _ in affine.named_parameters()} - names == {
        f"layers.{i}.{norm}.{p}"
        for i in range(2)
        for norm in ("norm_in", "norm_attn")
        for p in ("weight", "bias")
    }
    with pytest.raises(ValueError, match="layer_norm"):
        HSTUConfig(NUM_ROWS, layer_norm="rms")


def test_reference_sasrec_layer_norms_have_no_parameters_and_no_final_norm() -> None:
    reference, genrec = make_model("sasrec-reference"), make_model("sasrec")
    assert not any("norm" in n for n, _ in reference.named_parameters())
    assert isinstance(reference.norm_out, torch.nn.Identity)
    assert any(n.startswith("norm_out.") for n, _ in genrec.named_parameters())
